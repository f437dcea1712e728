"""Progress of a scoring run on stderr: a rich bar on a terminal, plain periodic lines otherwise
(a log file or CI gets one line every 10 s, not a redrawn bar)."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

PLAIN_INTERVAL_S = 10.0


class RichProgress:
    def __init__(self, total: int, done: int):
        self._progress = Progress(
            TextColumn("scoring"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[concurrency]}"),
            console=Console(stderr=True),
        )
        self._task = self._progress.add_task("scoring", total=total, completed=done, rate="", concurrency="")
        self._start, self._done_at_start = time.monotonic(), done
        self._progress.start()

    def update(self, done: int, in_flight: int, limit: float) -> None:
        rate = (done - self._done_at_start) / max(time.monotonic() - self._start, 1e-9)
        self._progress.update(
            self._task,
            completed=done,
            rate=f"{rate:.1f} req/s",
            concurrency=f"in flight {in_flight}, limit {limit:.1f}",
        )

    def close(self) -> None:
        self._progress.stop()


class PlainProgress:
    def __init__(self, total: int, done: int):
        self._total = total
        self._start = self._last = time.monotonic()
        self._done_at_start = self._done = done
        self._in_flight, self._limit = 0, 0.0

    def update(self, done: int, in_flight: int, limit: float) -> None:
        self._done, self._in_flight, self._limit = done, in_flight, limit
        if time.monotonic() - self._last >= PLAIN_INTERVAL_S:
            self._print()

    def _print(self) -> None:
        self._last = now = time.monotonic()
        rate = (self._done - self._done_at_start) / max(now - self._start, 1e-9)
        eta = (self._total - self._done) / rate if rate > 0 else float("nan")
        print(
            f"scored {self._done}/{self._total} ({100 * self._done / max(self._total, 1):.0f}%), "
            f"{rate:.1f} req/s, ETA {eta:.0f} s, in flight {self._in_flight}, limit {self._limit:.1f}",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        self._print()


def make_progress(total: int, done: int, enabled: bool) -> RichProgress | PlainProgress | None:
    if not enabled:
        return None
    return RichProgress(total, done) if sys.stderr.isatty() else PlainProgress(total, done)
