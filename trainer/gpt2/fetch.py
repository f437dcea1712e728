"""Downloads shared by the weights and the data: resumable, checksummed, one per node.

A download goes to `<dest>.part`, continues from where it stopped with an HTTP Range request,
is checked against its sha256 when one is known, and only then is renamed into place, so a
reader (or a crash) never sees a half-written file. The ranks of a node share one download:
the first takes a lock on `<dest>.lock` and fetches; the others wait for it and find the file.

Offline, a download fails fast with a one-line DownloadError that says what could not be
fetched, from where, and what to do instead (the caller's `offline_hint`).

Environment: GPT2_INSTRUCT_CACHE, the cache directory (default ~/.cache/gpt2-instruct).
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import os
import re
import sys
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from urllib.error import HTTPError, URLError

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

# Seconds to wait for a connection, or for the next bytes of a stalled one: offline fails fast.
TIMEOUT_S = 10
CHUNK_BYTES = 1 << 20


class DownloadError(ValueError):
    """A failed download. The message is one line: what, from where, and what to do instead."""


def cache_dir() -> Path:
    return Path(os.environ.get("GPT2_INSTRUCT_CACHE") or Path.home() / ".cache" / "gpt2-instruct")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: str | Path, *, sha256: str | None = None, offline_hint: str) -> Path:
    """Fetch url into dest (unless a good copy is there already) and return dest."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.with_name(dest.name + ".lock"), "a") as lock:
        # flock is per open file, so it serialises threads as well as processes; closing releases it.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if dest.exists():
            if sha256 is None or sha256_file(dest) == sha256:
                return dest
            dest.unlink()  # a damaged copy: fetch it again
        part = dest.with_name(dest.name + ".part")
        _fetch(url, part, offline_hint)
        if sha256 is not None:
            found = sha256_file(part)
            if found != sha256:
                part.unlink()
                raise DownloadError(
                    f"{dest.name} from {url} has sha256 {found}, expected {sha256}: "
                    f"deleted it; try again, or {offline_hint}"
                )
        os.replace(part, dest)
    return dest


def hub_sha256(url: str, *, offline_hint: str) -> str:
    """The sha256 the Hugging Face hub announces for a large (LFS) file at a `resolve` URL.

    The hub answers with a redirect to its CDN whose `X-Linked-Etag` header is the file's sha256
    (huggingface_hub's get_hf_file_metadata reads the same header); the CDN's own response does
    not carry it, so the redirect is not followed.
    """
    request = urllib.request.Request(url, method="HEAD", headers={"Accept-Encoding": "identity"})
    try:
        headers = urllib.request.build_opener(_KeepRedirect).open(request, timeout=TIMEOUT_S).headers
    except HTTPError as e:
        if e.code not in (301, 302, 303, 307, 308):
            raise _unreachable(url, url, f"HTTP {e.code} {e.reason}", offline_hint) from None
        headers = e.headers
    except (URLError, OSError, http.client.HTTPException) as e:
        raise _unreachable(url, url, getattr(e, "reason", e), offline_hint) from None
    etag = (headers.get("X-Linked-Etag") or "").removeprefix("W/").strip('"')
    if not re.fullmatch(r"[0-9a-f]{64}", etag):
        raise DownloadError(f"{url} announces no sha256 (X-Linked-Etag {etag!r}) to check a download; {offline_hint}")
    return etag


class _KeepRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # urllib then raises HTTPError for the 3xx, headers included


def _fetch(url: str, part: Path, offline_hint: str) -> None:
    """Download url into part, continuing a partial part file where the server allows it."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            if response.status != 206:
                have = 0  # the server sent the whole file: start over
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            with open(part, "ab" if have else "wb") as f, _progress(part.name.removesuffix(".part"), total, have) as advance:
                while chunk := response.read(CHUNK_BYTES):
                    f.write(chunk)
                    advance(len(chunk))
                f.flush()
                os.fsync(f.fileno())
    except HTTPError as e:
        if e.code == 416 and have:
            return  # Range Not Satisfiable: the part file already holds the whole file
        raise _unreachable(part.name, url, f"HTTP {e.code} {e.reason}", offline_hint) from None
    except (URLError, OSError, http.client.HTTPException) as e:
        raise _unreachable(part.name, url, getattr(e, "reason", e), offline_hint) from None
    size = part.stat().st_size
    if total is not None and size != total:
        # The connection closed early (http.client returns short reads rather than raising).
        raise _unreachable(part.name, url, f"the connection closed after {size} of {total} bytes", offline_hint)


def _unreachable(what: str, url: str, reason, offline_hint: str) -> DownloadError:
    reason = " ".join(str(reason).split())  # one line, whatever the OS said
    return DownloadError(f"could not download {what.removesuffix('.part')} from {url} ({reason}); {offline_hint}")


@contextmanager
def _progress(description: str, total: int | None, completed: int):
    """A progress bar on a terminal (stderr, so stdout stays clean); nothing otherwise."""
    if not sys.stderr.isatty():
        yield lambda n: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as progress:
        task = progress.add_task(description, total=total, completed=completed)
        yield lambda n: progress.advance(task, n)
