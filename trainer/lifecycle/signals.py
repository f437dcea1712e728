"""SIGTERM/SIGINT: stop at the next step boundary with a checkpoint; and notice lost ranks.

A signal only sets a flag. The flag travels in the all-reduce every training step already does
(trainer/training/loop.py), so all ranks agree to stop at the same step, even when only one of them was
signalled (the deepspeed launcher passes a signal on to one rank at a time). They then save a
checkpoint, rank 0 writes `run_end` with status `interrupted`, and every rank exits non-zero.

Duplicates are normal: Ctrl-C or scancel signal every process, and the launcher then sends each
rank a SIGTERM of its own. So a repeated signal forces an immediate exit only when it is the
same signal as the first and arrives more than DUPLICATE_WINDOW_S later (a user pressing Ctrl-C
again); `on_forced_exit` runs first (rank 0 writes `run_end` there).

A rank blocked in a collective whose peer died does not run Python signal handlers until the
collective returns. The launcher SIGTERMs the survivors as soon as one rank dies and SIGKILLs them
30 s later, so a watchdog thread (woken by signal.set_wakeup_fd, which works while the main
thread is blocked) checks whether the main thread is still stuck and some rank is lost (the rule
of PeerWatch); then it writes the failure and exits.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import threading
import time
from pathlib import Path

import orjson
import psutil

DUPLICATE_WINDOW_S = 1.0
EXIT_INTERRUPTED = 130


class StopSignals:
    def __init__(self, on_forced_exit=None):
        self.on_forced_exit = on_forced_exit  # called in the handler before a forced exit
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
            if self.on_forced_exit is not None:
                self.on_forced_exit()
            os._exit(128 + signum)  # asked twice: no checkpoint, no cleanup

    @property
    def name(self) -> str | None:
        return signal.Signals(self.requested).name if self.requested else None


# A rank of the current attempt is lost when its process is gone (a rank on this host) or when its
# heartbeat file has not grown for this long by our own clock: 15 heartbeats at the default 2 s.
# Each heartbeat opens, appends and closes the file, so NFS's close-to-open consistency shows it
# to a reader that opens the file; the margin is for a slow file server (docs/fault-tolerance.md).
LOST_AFTER_S = 30.0


class PeerWatch:
    """Which ranks of this attempt are lost. `update` (called every few seconds) notes when each
    rank's heartbeat file last grew; heartbeat files of ranks beyond the world size (an earlier
    attempt on more ranks) are not looked at."""

    def __init__(self, ranks_dir: Path, world_size: int, clock=time.monotonic):
        self.ranks_dir = Path(ranks_dir)
        self.world_size = world_size
        self.host = socket.gethostname()
        self.clock = clock
        self._grown: dict[int, tuple[int, float]] = {}  # rank -> (file size, when it last grew)
        self._lock = threading.Lock()  # the watchdog's thread and the main one both ask

    def _path(self, rank: int) -> Path:
        return self.ranks_dir / f"rank-{rank}.jsonl"

    def update(self) -> None:
        now = self.clock()
        with self._lock:
            for rank in range(self.world_size):
                try:
                    with open(self._path(rank), "rb") as f:  # opened, not stat'ed: NFS revalidates on open
                        size = os.fstat(f.fileno()).st_size
                except OSError:
                    size = -1  # not written yet
                if self._grown.get(rank, (None,))[0] != size:
                    self._grown[rank] = (size, now)

    def lost(self) -> list[int]:
        self.update()
        now = self.clock()
        with self._lock:
            silent = {rank for rank, (_, grew) in self._grown.items() if now - grew > LOST_AFTER_S}
        return sorted(silent | {rank for rank in range(self.world_size) if self._process_gone(rank)})

    def _process_gone(self, rank: int) -> bool:
        """A rank on this host whose process no longer exists (its last heartbeat names it)."""
        try:
            with open(self._path(rank), "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
                last = f.read().rstrip(b"\n").rsplit(b"\n", 1)[-1]
            beat = orjson.loads(last)
        except (OSError, orjson.JSONDecodeError):
            return False
        if not isinstance(beat, dict) or beat.get("host") != self.host or not isinstance(beat.get("pid"), int):
            return False
        try:  # a killed rank stays a zombie until the launcher reaps it: gone all the same
            return psutil.Process(beat["pid"]).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True


class LostRankWatchdog:
    """Keeps the PeerWatch up to date; after a signal, if the main thread makes no progress while a
    peer is lost: fail fast, before the launcher's SIGKILL.

    `on_lost(ranks)` runs in this thread (rank 0 writes run_end there); then the process exits.
    """

    def __init__(self, heartbeat, peers: PeerWatch, on_lost, grace_s: float):
        self.heartbeat = heartbeat
        self.peers = peers
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
        self._thread.join(timeout=5)

    def _run(self) -> None:
        try:
            while True:
                ready, _, _ = select.select([self._read_fd], [], [], self.heartbeat.every_s)
                if ready:
                    if not os.read(self._read_fd, 64):
                        return  # closed: the run ended
                    self._after_signal()
                self.peers.update()
        finally:
            os.close(self._read_fd)

    def _after_signal(self) -> None:
        position = (self.heartbeat.step, self.heartbeat.phase, self.heartbeat.phase_since)
        deadline = time.monotonic() + self.grace_s
        while time.monotonic() < deadline:
            self.peers.update()
            time.sleep(min(1.0, self.grace_s))
        stuck = position == (self.heartbeat.step, self.heartbeat.phase, self.heartbeat.phase_since)
        lost = self.peers.lost() if stuck else []
        if lost:
            self.on_lost(lost)
            os._exit(1)
