"""SIGTERM/SIGINT: stop at the next step boundary with a checkpoint; and notice lost ranks.

A signal only sets a flag. The flag travels in the all-reduce every training step already does
(trainer/loop.py), so all ranks agree to stop at the same step, even when only one of them was
signalled (the deepspeed launcher passes a signal on to one rank at a time). They then save a
checkpoint, rank 0 writes `run_end` with status `interrupted`, and every rank exits non-zero.

Duplicates are normal: Ctrl-C or scancel signal every process, and the launcher then sends each
rank a SIGTERM of its own. So a repeated signal forces an immediate exit only when it is the
same signal as the first and arrives more than DUPLICATE_WINDOW_S later (a user pressing Ctrl-C
again).

A rank blocked in a collective whose peer died does not run Python signal handlers until the
collective returns. The launcher SIGTERMs the survivors as soon as one rank dies and SIGKILLs them
30 s later, so a watchdog thread (woken by signal.set_wakeup_fd, which works while the main
thread is blocked) checks whether the main thread is still stuck and some rank's heartbeat file
has stopped growing; then it writes the failure and exits.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

DUPLICATE_WINDOW_S = 1.0
EXIT_INTERRUPTED = 130


class StopSignals:
    def __init__(self):
        self.requested: int | None = None
        self._first_at = 0.0
        self._previous = {}

    def install(self) -> "StopSignals":
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        now = time.monotonic()
        if self.requested is None:
            self.requested = signum
            self._first_at = now
        elif signum == self.requested and now - self._first_at > DUPLICATE_WINDOW_S:
            os._exit(128 + signum)  # asked twice: no checkpoint, no cleanup

    @property
    def name(self) -> str | None:
        return signal.Signals(self.requested).name if self.requested else None


def silent_ranks(ranks_dir: Path, window_s: float) -> list[int]:
    """Ranks whose heartbeat file did not grow during `window_s` (measured by this process)."""

    def sizes() -> dict[int, int]:
        found = {}
        for path in Path(ranks_dir).glob("rank-*.jsonl"):
            try:
                found[int(path.stem.split("-")[1])] = path.stat().st_size
            except (OSError, ValueError):
                pass
        return found

    before = sizes()
    time.sleep(window_s)
    after = sizes()
    return sorted(rank for rank, size in before.items() if after.get(rank) == size)


class LostRankWatchdog:
    """After a signal, if the main thread makes no progress and a peer went silent: fail fast.

    `on_lost(ranks)` runs in this thread (rank 0 writes run_end there); then the process exits.
    """

    def __init__(self, heartbeat, ranks_dir: Path, on_lost, grace_s: float):
        self.heartbeat = heartbeat
        self.ranks_dir = ranks_dir
        self.on_lost = on_lost
        self.grace_s = grace_s
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        self._previous_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._run, name="lost-rank-watchdog", daemon=True)

    def start(self) -> "LostRankWatchdog":
        self._thread.start()
        return self

    def close(self) -> None:
        signal.set_wakeup_fd(self._previous_fd)
        os.close(self._write_fd)  # wakes the thread with EOF

    def _run(self) -> None:
        if not os.read(self._read_fd, 1):
            os.close(self._read_fd)
            return  # closed: the run ended
        position = (self.heartbeat.step, self.heartbeat.phase, self.heartbeat.phase_since)
        lost = silent_ranks(self.ranks_dir, self.grace_s)
        stuck = position == (self.heartbeat.step, self.heartbeat.phase, self.heartbeat.phase_since)
        if stuck and lost:
            self.on_lost(lost)
            os._exit(1)
        os.close(self._read_fd)
