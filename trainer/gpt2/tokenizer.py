"""The GPT-2 tokenizer: tiktoken's `gpt2` encoding, from OpenAI's files or a local copy of them.

The chapter uses `tiktoken.get_encoding("gpt2")`, which downloads OpenAI's `encoder.json` and
`vocab.bpe` on first use. Cluster nodes are often offline, so the same encoding can be built from
a local directory holding those two files (`--tokenizer-dir DIR` or GPT2_TOKENIZER_DIR), checked
against the official sha256s so that a different vocabulary cannot slip in.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import ENDOFTEXT, r50k_pat_str

TOKENIZER_DIR_ENV = "GPT2_TOKENIZER_DIR"
# <|endoftext|>: GPT-2's one special token. It ends every training example, pads batches (the
# chapter's collate) and stops generation.
EOT_TOKEN_ID = 50256

# The files of OpenAI's GPT-2 release and their sha256s, as tiktoken_ext/openai_public.py checks.
GPT2_FILES_SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}

# How long to wait for tiktoken's own download before calling the machine offline. tiktoken
# fetches with `requests.get(url)` and no timeout (tiktoken/load.py, read_file), so behind a
# firewall that drops packets it would wait for the kernel's TCP connect timeout (minutes).
DOWNLOAD_TIMEOUT_S = 30.0

_HOW_TO_FIX = (
    f"pass --tokenizer-dir DIR (a directory with GPT-2's encoder.json and vocab.bpe) "
    f"or set {TOKENIZER_DIR_ENV}"
)


class TokenizerError(ValueError):
    """The tokenizer cannot be built. The message is one line saying what to do."""


def get_tokenizer(tokenizer_dir: str | Path | None = None) -> tiktoken.Encoding:
    """GPT-2's BPE encoding: from `tokenizer_dir` (or $GPT2_TOKENIZER_DIR), else tiktoken's own."""
    if tokenizer_dir is None:
        tokenizer_dir = os.environ.get(TOKENIZER_DIR_ENV) or None
    if tokenizer_dir is None:
        return _tiktoken_gpt2()
    return _gpt2_from_dir(Path(tokenizer_dir))


def tokenizer_files_sha256(tokenizer_dir: str | Path) -> dict[str, str]:
    """The sha256 of each GPT-2 tokenizer file in `tokenizer_dir`, for a run's provenance."""
    tokenizer_dir = Path(tokenizer_dir)
    digests = {}
    for name in GPT2_FILES_SHA256:
        path = tokenizer_dir / name
        try:
            digests[name] = hashlib.sha256(path.read_bytes()).hexdigest()
        except FileNotFoundError:
            raise TokenizerError(f"{path}: not found; {_HOW_TO_FIX}") from None
        except OSError as e:
            raise TokenizerError(f"{path}: cannot read ({e.strerror}); {_HOW_TO_FIX}") from None
    return digests


def _gpt2_from_dir(tokenizer_dir: Path) -> tiktoken.Encoding:
    """The same Encoding as tiktoken_ext.openai_public.gpt2(), from local files."""
    if not tokenizer_dir.is_dir():
        raise TokenizerError(f"{tokenizer_dir}: no such directory; {_HOW_TO_FIX}")
    for name, digest in tokenizer_files_sha256(tokenizer_dir).items():
        if digest != GPT2_FILES_SHA256[name]:
            raise TokenizerError(
                f"{tokenizer_dir / name}: sha256 {digest} is not that of OpenAI's GPT-2 {name} "
                f"({GPT2_FILES_SHA256[name]}); {_HOW_TO_FIX}"
            )
    # With the hashes given, tiktoken also rejects a stale copy in its own file cache.
    mergeable_ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(tokenizer_dir / "vocab.bpe"),
        encoder_json_file=str(tokenizer_dir / "encoder.json"),
        vocab_bpe_hash=GPT2_FILES_SHA256["vocab.bpe"],
        encoder_json_hash=GPT2_FILES_SHA256["encoder.json"],
    )
    return tiktoken.Encoding(
        name="gpt2",
        explicit_n_vocab=50257,
        pat_str=r50k_pat_str,
        mergeable_ranks=mergeable_ranks,
        special_tokens={ENDOFTEXT: EOT_TOKEN_ID},
    )


def _tiktoken_gpt2() -> tiktoken.Encoding:
    """tiktoken.get_encoding("gpt2"), or a TokenizerError when it cannot be had offline.

    It runs in a daemon thread so that a download hanging on a dead network is abandoned after
    DOWNLOAD_TIMEOUT_S instead of holding up the run (and does not keep the process alive).
    """
    outcome: dict[str, object] = {}

    def load() -> None:
        try:
            outcome["encoding"] = tiktoken.get_encoding("gpt2")
        except Exception as e:  # requests' connection errors, tiktoken's hash mismatch, ...
            outcome["error"] = e

    thread = threading.Thread(target=load, name="tiktoken-gpt2", daemon=True)
    thread.start()
    thread.join(DOWNLOAD_TIMEOUT_S)
    if "encoding" in outcome:
        return outcome["encoding"]
    reason = (
        f"no answer within {DOWNLOAD_TIMEOUT_S:g} s"
        if thread.is_alive()
        else type(outcome["error"]).__name__
    )
    raise TokenizerError(
        f"cannot download GPT-2's tokenizer files for tiktoken ({reason}); {_HOW_TO_FIX}"
    )
