"""The entries to score, read as often as a run needs them: JSONL as a stream (one entry in
memory at a time), a JSON list parsed once (a JSON document has to be read whole).

Each entry is checked as `instruct.read_entries` checks it, with the same one-line errors
naming the file, the entry (0-based) and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import orjson

from instruct import EntryError, read_entries

# Read in 1 MiB blocks. Besides fewer reads, freeing this buffer raises glibc's threshold for
# serving allocations with mmap (it adapts to the largest mmapped block freed) above asyncio's
# 256 KiB socket-read buffer; at its default 128 KiB, every read from a server cost an
# mmap/mremap/munmap, about a third more CPU per request.
READ_BUFFER = 1 << 20
CHANGED = "changed while it was being scored; run again"


def check_entry(path: Path, index: int, entry, required: Iterable[str], optional: Iterable[str]) -> dict:
    if not isinstance(entry, dict):
        raise EntryError(f"{path}: entry {index}: expected an object, got {type(entry).__name__}")
    for field in required:
        if field not in entry:
            raise EntryError(f"{path}: entry {index}: missing field '{field}'")
        if not isinstance(entry[field], str):
            raise EntryError(f"{path}: entry {index}: field '{field}' must be a string, got {type(entry[field]).__name__}")
    for field in optional:
        if field in entry and entry[field] is not None and not isinstance(entry[field], str):
            raise EntryError(f"{path}: entry {index}: field '{field}' must be a string, got {type(entry[field]).__name__}")
    return entry


def _first_byte(path: Path) -> bytes:
    """The file's first byte that is not white space (b"" for an empty file)."""
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 16):
                if stripped := block.lstrip():
                    return stripped[:1]
    except FileNotFoundError:
        raise EntryError(f"{path}: file not found") from None
    except OSError as e:
        raise EntryError(f"{path}: cannot read ({e.strerror})") from None
    return b""


class Entries:
    """Iterable over the file's entries, each checked; iterate again for another pass."""

    def __init__(self, path: Path, required: tuple[str, ...], optional: tuple[str, ...] = ("input",)):
        self.path, self.required, self.optional = path, required, optional
        self._list = read_entries(path, required, optional) if _first_byte(path) == b"[" else None
        self._version = None if self._list is not None else self._stat()

    def _stat(self) -> tuple[int, int]:
        stat = self.path.stat()
        return stat.st_size, stat.st_mtime_ns

    def __iter__(self) -> Iterator[dict]:
        if self._list is not None:
            yield from self._list
            return
        index = 0
        with open(self.path, "rb", buffering=READ_BUFFER) as f:
            for line_number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    entry = orjson.loads(line)
                except orjson.JSONDecodeError as e:
                    raise EntryError(f"{self.path}: line {line_number} is not valid JSON ({e})") from None
                yield check_entry(self.path, index, entry, self.required, self.optional)
                index += 1
        if index == 0:
            raise EntryError(f"{self.path}: holds no entries")
        if self._stat() != self._version:  # each pass must read the same entries
            raise EntryError(f"{self.path}: {CHANGED}")
