"""The GPT-2 tokenizer from local files: the official token ids, checksums, offline failures."""

from __future__ import annotations

import shutil
import socket
import threading
import time

import orjson
import pytest

from trainer.gpt2 import tokenizer as tokenizer_module
from trainer.gpt2.tokenizer import GPT2_FILES_SHA256, TokenizerError, get_tokenizer, tokenizer_files_sha256


@pytest.fixture(scope="module")
def gpt2(tokenizer_dir):
    return get_tokenizer(tokenizer_dir)


@pytest.fixture
def no_tiktoken_cache(tmp_path, monkeypatch):
    """No copy of the tokenizer files in tiktoken's cache and no GPT2_TOKENIZER_DIR: only the
    network could serve tiktoken.get_encoding("gpt2")."""
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    monkeypatch.delenv("GPT2_TOKENIZER_DIR", raising=False)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)


def route_https_through(monkeypatch, port: int) -> None:
    """Send requests' https traffic (tiktoken downloads with requests) to a proxy on 127.0.0.1."""
    for name in ("HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{port}")


def test_known_token_ids(gpt2):
    # Ids of OpenAI's GPT-2 vocabulary (encoder.json): "Hello", ",", " world"; " the".
    assert gpt2.encode("Hello, world") == [15496, 11, 995]
    assert gpt2.encode(" the") == [262]
    assert gpt2.encode("<|endoftext|>", allowed_special={"<|endoftext|>"}) == [50256]
    assert gpt2.eot_token == 50256
    assert gpt2.n_vocab == 50257
    # Outside allowed_special, the special token's text is rejected, as in tiktoken's gpt2.
    with pytest.raises(ValueError):
        gpt2.encode("<|endoftext|>")


def test_matches_hugging_face_on_the_whole_data_file(gpt2, tokenizer_dir, instruction_data):
    """Every text of the instruction data encodes as Hugging Face's GPT-2 tokenizer (an
    independent implementation) encodes it from the same files, and decodes back exactly."""
    from transformers import GPT2TokenizerFast

    oracle = GPT2TokenizerFast(
        vocab=str(tokenizer_dir / "encoder.json"), merges=str(tokenizer_dir / "vocab.bpe")
    )
    texts = [
        entry[field]
        for entry in orjson.loads(instruction_data.read_bytes())
        for field in ("instruction", "input", "output")
        if entry[field]
    ]
    assert len(texts) == 1100 * 2 + 325  # 775 entries have an empty input
    ours = gpt2.encode_ordinary_batch(texts)
    assert ours == oracle(texts)["input_ids"]
    assert gpt2.decode_batch(ours) == texts


def test_files_sha256_are_the_official_ones(tokenizer_dir):
    assert tokenizer_files_sha256(tokenizer_dir) == GPT2_FILES_SHA256


def test_environment_variable_names_the_directory(tokenizer_dir, no_tiktoken_cache, monkeypatch):
    route_https_through(monkeypatch, unused_port())  # tiktoken's download could not work
    monkeypatch.setenv("GPT2_TOKENIZER_DIR", str(tokenizer_dir))
    assert get_tokenizer().encode("Hello, world") == [15496, 11, 995]


def test_wrong_checksum_is_one_line(tokenizer_dir, tmp_path):
    local = tmp_path / "gpt2"
    shutil.copytree(tokenizer_dir, local)
    with open(local / "vocab.bpe", "ab") as f:
        f.write(b"a b\n")
    with pytest.raises(TokenizerError) as raised:
        get_tokenizer(local)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"{local / 'vocab.bpe'}: sha256 ")
    assert GPT2_FILES_SHA256["vocab.bpe"] in message
    assert "--tokenizer-dir DIR" in message


def test_missing_directory_and_missing_file_are_one_line(tokenizer_dir, tmp_path):
    with pytest.raises(TokenizerError) as raised:
        get_tokenizer(tmp_path / "nowhere")
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'nowhere'}: no such directory; ")
    assert "--tokenizer-dir DIR" in message and "GPT2_TOKENIZER_DIR" in message

    half = tmp_path / "half"
    half.mkdir()
    shutil.copy(tokenizer_dir / "vocab.bpe", half)
    with pytest.raises(TokenizerError) as raised:
        get_tokenizer(half)
    assert "\n" not in str(raised.value)
    assert str(raised.value).startswith(f"{half / 'encoder.json'}: not found; ")


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_without_directory_fails_fast(no_tiktoken_cache, monkeypatch):
    route_https_through(monkeypatch, unused_port())  # connection refused, as with no network
    start = time.monotonic()
    with pytest.raises(TokenizerError) as raised:
        get_tokenizer()
    assert time.monotonic() - start < 5
    message = str(raised.value)
    assert "\n" not in message
    assert "--tokenizer-dir DIR" in message and "GPT2_TOKENIZER_DIR" in message


def test_hanging_download_is_abandoned(no_tiktoken_cache, monkeypatch):
    """A network that never answers (packets dropped) must not hold the run for minutes."""
    monkeypatch.setattr(tokenizer_module, "DOWNLOAD_TIMEOUT_S", 0.5)
    # A listening socket that is never accepted from: the connection opens, no reply comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        route_https_through(monkeypatch, silent.getsockname()[1])
        start = time.monotonic()
        with pytest.raises(TokenizerError, match=r"\(no answer within 0\.5 s\); pass --tokenizer-dir DIR"):
            get_tokenizer()
        assert time.monotonic() - start < 5
    # Closing the socket resets the connection: the abandoned download ends, nothing is left.
    for thread in threading.enumerate():
        if thread.name == "tiktoken-gpt2":
            thread.join(timeout=10)
            assert not thread.is_alive()
