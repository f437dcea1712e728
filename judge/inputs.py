"""The entries to score, read as often as a run needs them: JSONL as a stream (one entry in
memory at a time), a JSON list parsed once (a JSON document has to be read whole).

Each entry is checked by `instruct`'s reader, with its one-line errors naming the file, the entry
(0-based) and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from instruct import EntryError, is_json_list, iter_entries, no_entries, read_entries

CHANGED = "changed while it was being scored; run again"


class Entries:
    """Iterable over the file's entries, each checked; iterate again for another pass."""

    def __init__(self, path: Path, required: tuple[str, ...], optional: tuple[str, ...] = ("input",)):
        self.path, self.required, self.optional = path, required, optional
        self._list = read_entries(path, required, optional) if is_json_list(path) else None
        self._version = None if self._list is not None else self._stat()

    def _stat(self) -> tuple[int, int]:
        stat = self.path.stat()
        return stat.st_size, stat.st_mtime_ns

    def __iter__(self) -> Iterator[dict]:
        if self._list is not None:
            yield from self._list
            return
        count = 0
        for entry in iter_entries(self.path, self.required, self.optional):
            count += 1
            yield entry
        if count == 0:
            raise no_entries(self.path)
        if self._stat() != self._version:  # each pass must read the same entries
            raise EntryError(f"{self.path}: {CHANGED}")
