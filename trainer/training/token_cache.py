"""The token cache: an instruction file tokenized once, then memory-mapped by every rank of a node.

    $GPT2_INSTRUCT_CACHE/tokens/<key>/   (default ~/.cache/gpt2-instruct/tokens/<key>/)
      tokens.bin          uint16: every entry's prompt and response tokens end to end, in file order
      offsets.bin         int64: where each entry's tokens start, and where the last one ends
      prompt_lengths.bin  int32: each entry's number of prompt tokens
      entries.jsonl       the entries, one JSON object per line (the test and validation texts are
                          read from here one at a time, never the whole file)
      entry_offsets.bin   int64: where each entry's line starts, and where the last one ends
      manifest.json       what the key was made of, the counts, and how long the build took

The tokens are untruncated (`--max-length` cuts them at batch time), so one cache serves every
run of the file. The key is the sha256 of what the tokens depend on: the data file's sha256, the
tokenizer (merges, pre-tokenizer pattern, special tokens), the prompt format and CACHE_VERSION
(this layout). Change any of them and another key, so another cache, is built; nothing is ever
updated in place.

A cache is built in a temporary folder `.<key>.<host>.<pid>.tmp` beside it and renamed into place
once its manifest is written, so a reader (on any host of a shared filesystem) sees a complete
cache or none. Two builders of the same key (two nodes on one shared filesystem) each build their
own folder; the first rename wins and the other discards its copy, which is the same bytes. A
build killed halfway leaves its .tmp folder, which nothing reads; the next build on that host
removes it. The arrays are read through numpy memory maps: the ranks of a node share one copy of
the file's pages in the page cache, and a rank's resident memory grows only by the pages it reads.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from itertools import islice
from pathlib import Path
from typing import Callable

import numpy as np
import orjson
import psutil
import tiktoken

from instruct import format_prompt, is_json_list, iter_entries, no_entries, read_entries, unreadable
from trainer.gpt2.fetch import cache_dir, sha256_file
from trainer.training.data import TOKEN_DTYPE, tokenize

CACHE_VERSION = 1  # the layout above; a change to it or to `tokenize` bumps it
CHUNK_ENTRIES = 16_384  # entries tokenized (in parallel) and written at a time
OFFSET_DTYPE, PROMPT_DTYPE = np.int64, np.int32
FILES = {  # file -> dtype of its array
    "tokens.bin": TOKEN_DTYPE,
    "offsets.bin": OFFSET_DTYPE,
    "prompt_lengths.bin": PROMPT_DTYPE,
    "entries.jsonl": np.uint8,
    "entry_offsets.bin": OFFSET_DTYPE,
}
MANIFEST = "manifest.json"


def file_sizes(manifest: dict) -> dict[str, int]:
    """The size in bytes of each file of a complete cache with this manifest."""
    entries = manifest["entries"]
    counts = {"tokens.bin": manifest["tokens"], "offsets.bin": entries + 1, "prompt_lengths.bin": entries,
              "entries.jsonl": manifest["entry_bytes"], "entry_offsets.bin": entries + 1}
    return {name: count * np.dtype(FILES[name]).itemsize for name, count in counts.items()}


def tokens_dir() -> Path:
    return cache_dir() / "tokens"


def tokenizer_sha256(tokenizer: tiktoken.Encoding) -> str:
    """The tokenizer as far as its tokens go: merges by rank, pre-tokenizer pattern, special tokens
    (the fields tiktoken itself pickles an Encoding by)."""
    digest = hashlib.sha256(tokenizer._pat_str.encode())
    for piece, rank in sorted(tokenizer._mergeable_ranks.items(), key=lambda item: item[1]):
        digest.update(rank.to_bytes(4, "little") + len(piece).to_bytes(4, "little") + piece)
    digest.update(orjson.dumps(sorted(tokenizer._special_tokens.items())))
    return digest.hexdigest()


def prompt_format_sha256() -> str:
    """The prompt format (instruct.format_prompt), with and without an input block."""
    probes = [{"instruction": "\x00instruction", "input": "\x00input"}, {"instruction": "\x00instruction", "input": ""}]
    return hashlib.sha256("\x01".join(format_prompt(probe) for probe in probes).encode()).hexdigest()


class TokenCache:
    """One file's cache folder (complete or not yet built); `map` opens its arrays. Picklable
    until mapped: local rank 0 finds it and hands it to its node's other ranks."""

    def __init__(self, folder: Path, key_inputs: dict):
        self.folder = folder
        self.key_inputs = key_inputs  # what the key is the sha256 of (recorded in the manifest)
        self._maps: dict[str, np.memmap] | None = None

    @classmethod
    def of(cls, data_path: Path, tokenizer: tiktoken.Encoding) -> "TokenCache":
        """The cache of this file with this tokenizer (built or not)."""
        key_inputs = {"layout": CACHE_VERSION, "data_sha256": sha256_file(data_path),
                      "tokenizer_sha256": tokenizer_sha256(tokenizer), "prompt_sha256": prompt_format_sha256()}
        key = hashlib.sha256(orjson.dumps(key_inputs, option=orjson.OPT_SORT_KEYS)).hexdigest()
        return cls(tokens_dir() / key, key_inputs)

    @property
    def data_sha256(self) -> str:
        """The data file's sha256, hashed once when the run looked its cache up (the run's
        provenance and a resume's check use it too)."""
        return self.key_inputs["data_sha256"]

    def manifest(self) -> dict | None:
        """The manifest of the complete cache; None when there is none. A folder that is there but
        damaged (a file missing or of the wrong size) is an error naming it: delete it to rebuild."""
        if not self.folder.exists():
            return None
        try:
            manifest = orjson.loads((self.folder / MANIFEST).read_bytes())
            complete = manifest["key_inputs"] == self.key_inputs and all(
                (self.folder / name).stat().st_size == size for name, size in file_sizes(manifest).items())
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError):
            complete = False
        if not complete:
            raise ValueError(f"{self.folder}: a damaged token cache (its files do not match its manifest); "
                             "delete the folder and start again to rebuild it")
        return manifest

    def build(self, data_path: Path, tokenizer: tiktoken.Encoding, expected_entries: int,
              between_chunks: Callable[[], None] = lambda: None, checked: list[dict] | None = None) -> dict:
        """Tokenize the file into a temporary folder and rename it into place; the manifest.
        `between_chunks` runs after each chunk is written (it may raise to stop the build); on any
        exception the temporary folder is removed. `checked`: the file's entries as `look_up`
        parsed and checked them (a JSON list, so that it is parsed once); None: stream the file."""
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_builds(self.folder)
        building = self.folder.with_name(f".{self.folder.name}.{socket.gethostname()}.{os.getpid()}.tmp")
        started = time.perf_counter()
        try:
            building.mkdir()
            entries = iter(checked) if checked is not None else iter_entries(data_path)
            counts = write_files(building, data_path.name, entries, tokenizer, expected_entries, between_chunks)
            if sha256_file(data_path) != self.data_sha256:
                raise ValueError(f"{data_path}: changed while it was being tokenized; start again")
            seconds = time.perf_counter() - started
            manifest = {"key_inputs": self.key_inputs, **counts, "source": str(data_path),
                        "host": socket.gethostname(), "seconds": round(seconds, 3),
                        "tokens_per_s": round(counts["tokens"] / max(seconds, 1e-9)), "created": time.time()}
            write_synced(building / MANIFEST, orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
            publish(building, self.folder)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        return manifest

    def map(self) -> None:
        """Open the files as read-only memory maps (nothing is read until it is used)."""
        self._maps = {name: np.memmap(self.folder / name, dtype=dtype, mode="r") for name, dtype in FILES.items()}

    def _array(self, name: str) -> np.memmap:
        if self._maps is None:
            raise RuntimeError(f"{self.folder}: the token cache is read before the tokenize phase mapped it")
        return self._maps[name]

    # A TokenTable's arrays, so that an InstructionDataset reads the cache as it reads a table.
    tokens = property(lambda self: self._array("tokens.bin"))
    offsets = property(lambda self: self._array("offsets.bin"))
    prompt_lengths = property(lambda self: self._array("prompt_lengths.bin"))

    def entry(self, index: int) -> dict:
        """Entry `index` of the file, as it was there."""
        start, end = self._array("entry_offsets.bin")[index : index + 2]
        return orjson.loads(self._array("entries.jsonl")[start:end].tobytes())


class Entries(Sequence):
    """Some entries of a cached file (a split's), by position: each read from the cache when asked
    for, so the whole input is never held."""

    def __init__(self, cache: TokenCache, indices: np.ndarray):
        self.cache = cache
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> dict:
        if not -len(self) <= position < len(self):
            raise IndexError(position)
        return self.cache.entry(int(self.indices[position]))

    @property
    def prompt_lengths(self) -> np.ndarray:
        """Each entry's number of prompt tokens (its format_prompt), from the cache."""
        return self.cache.prompt_lengths[self.indices]


def look_up(data_path: Path, tokenizer: tiktoken.Encoding) -> tuple[TokenCache, int, bool, list[dict] | None]:
    """(cache, entries, found, checked): the file's cache and its number of entries, read from the
    cache's manifest when it is complete, else counted by checking every entry (a bad one raises
    EntryError naming the file, entry and field). Checks before building, so that bad input
    stops a run before anything is written. `checked`: on a miss, a JSON list's entries (it is
    parsed whole anyway: the build takes them instead of parsing it again); JSONL is streamed
    twice instead, so that its entries never sit in memory."""
    try:
        cache = TokenCache.of(data_path, tokenizer)
    except OSError as e:
        raise unreadable(data_path, e) from None
    manifest = cache.manifest()
    if manifest is not None:
        return cache, manifest["entries"], True, None
    if is_json_list(data_path):
        checked = read_entries(data_path)
        return cache, len(checked), False, checked
    count = sum(1 for _ in iter_entries(data_path))
    if not count:
        raise no_entries(data_path)
    return cache, count, False, None


def describe(cache: TokenCache, found: bool) -> str:
    """One line on the cache a run reads: where it is, and whether the run found it or built it."""
    manifest = cache.manifest()
    how = "found" if found else f"built on {manifest['host']} in {manifest['seconds']:.1f} s ({manifest['tokens_per_s']:,} tokens/s)"
    return f"token cache     {how}: {manifest['entries']:,} entries, {manifest['tokens']:,} tokens, {cache.folder}"


# ---- the build's steps -------------------------------------------------------------------------


def write_files(folder: Path, name: str, entries: Iterator[dict], tokenizer: tiktoken.Encoding,
                expected_entries: int, between_chunks: Callable[[], None]) -> dict[str, int]:
    """Stream the entries (of the file `name`) into the cache's files, a chunk at a time; the
    counts of the manifest."""
    counts = {"entries": 0, "tokens": 0, "entry_bytes": 0}
    with ExitStack() as stack, progress(f"tokenizing {name}", expected_entries) as advance:
        files = {name: stack.enter_context(open(folder / name, "wb")) for name in FILES}
        files["offsets.bin"].write(np.zeros(1, OFFSET_DTYPE).tobytes())
        files["entry_offsets.bin"].write(np.zeros(1, OFFSET_DTYPE).tobytes())
        while chunk := list(islice(entries, CHUNK_ENTRIES)):
            table = tokenize(chunk, tokenizer)
            lines = [orjson.dumps(entry) + b"\n" for entry in chunk]
            line_ends = np.cumsum([len(line) for line in lines], dtype=OFFSET_DTYPE)
            files["tokens.bin"].write(table.tokens.tobytes())
            files["offsets.bin"].write((table.offsets[1:] + counts["tokens"]).astype(OFFSET_DTYPE).tobytes())
            files["prompt_lengths.bin"].write(table.prompt_lengths.astype(PROMPT_DTYPE).tobytes())
            files["entries.jsonl"].write(b"".join(lines))
            files["entry_offsets.bin"].write((line_ends + counts["entry_bytes"]).tobytes())
            counts["entries"] += len(chunk)
            counts["tokens"] += int(table.offsets[-1])
            counts["entry_bytes"] += int(line_ends[-1])
            advance(len(chunk))
            between_chunks()
        for f in files.values():
            f.flush()
            os.fsync(f.fileno())
    return counts


def write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def publish(building: Path, folder: Path) -> None:
    """Rename the finished folder into place; when another builder got there first, keep theirs."""
    try:
        os.rename(building, folder)
    except OSError as e:
        if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
        shutil.rmtree(building, ignore_errors=True)


def remove_stale_builds(folder: Path) -> None:
    """The .tmp folders of builds of this key killed on this host (their process is gone)."""
    pattern = glob.escape(f".{folder.name}.{socket.gethostname()}.") + "*.tmp"
    for stale in folder.parent.glob(pattern):
        pid = stale.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


@contextmanager
def progress(description: str, total: int):
    """A progress bar on a terminal (stderr), else one line saying what is being done."""
    print(f"{description}: {total:,} entries into the token cache", file=sys.stderr, flush=True)
    if not sys.stderr.isatty():
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
