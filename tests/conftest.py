"""Shared test fixtures.

The real data and BPE files live in `../shared/` beside the checkout (read-only, never copied
into the repo); set GPT2_INSTRUCT_SHARED to point elsewhere.
"""

from __future__ import annotations

import os
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


@pytest.fixture(scope="session", autouse=True)
def token_cache_of_the_session(tmp_path_factory):
    """Training runs started by the tests build and share their token caches in a folder of the
    session (GPT2_INSTRUCT_CACHE), not in the user's ~/.cache; a test that needs its own sets it."""
    previous = os.environ.get("GPT2_INSTRUCT_CACHE")
    os.environ["GPT2_INSTRUCT_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if previous is None:
        del os.environ["GPT2_INSTRUCT_CACHE"]
    else:
        os.environ["GPT2_INSTRUCT_CACHE"] = previous
