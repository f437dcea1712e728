"""Atomic file writes: a reader (or a crash) never sees a half-written output.

Write to a temporary file in the same directory, flush it to disk, then rename over the target:
rename is atomic on POSIX file systems (and on NFS from one client).
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

import orjson


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # once, at import: os.umask is process-wide and threads write files too


@contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """A file written in full or not at all, streamed: a temporary file beside `path`, flushed to
    disk and renamed over it on success, removed on any failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide outputs from other users
        with os.fdopen(fd, "wb", buffering=1 << 20) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_file(path) as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj, indent: bool = True) -> None:
    option = orjson.OPT_INDENT_2 if indent else 0
    atomic_write_bytes(path, orjson.dumps(obj, option=option | orjson.OPT_SERIALIZE_NUMPY) + b"\n")
