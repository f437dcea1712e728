"""Shared test fixtures.

The real data and BPE files live in `../shared/` beside the checkout (read-only, never copied
into the repo); set GPT2_INSTRUCT_SHARED to point elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from testkit.paths import INSTRUCTION_DATA, RESPONSES_DATA, SHARED, TOKENIZER_DIR


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"shared data not found at {SHARED}: set GPT2_INSTRUCT_SHARED")
    return SHARED


@pytest.fixture(scope="session")
def tokenizer_dir(shared_dir) -> Path:
    return TOKENIZER_DIR


@pytest.fixture(scope="session")
def instruction_data(shared_dir) -> Path:
    return INSTRUCTION_DATA


@pytest.fixture(scope="session")
def responses_data(shared_dir) -> Path:
    return RESPONSES_DATA
