"""Shared test fixtures.

The real data and BPE files live in `../shared/` beside the checkout (read-only, never copied
into the repo); set GPT2_INSTRUCT_SHARED to point elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("GPT2_INSTRUCT_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"shared data not found at {SHARED}: set GPT2_INSTRUCT_SHARED")
    return SHARED


@pytest.fixture(scope="session")
def tokenizer_dir(shared_dir) -> Path:
    return shared_dir / "tokenizer" / "gpt2"


@pytest.fixture(scope="session")
def instruction_data(shared_dir) -> Path:
    return shared_dir / "data" / "instruction-data.json"


@pytest.fixture(scope="session")
def responses_data(shared_dir) -> Path:
    return shared_dir / "data" / "instruction-data-with-response.json"
