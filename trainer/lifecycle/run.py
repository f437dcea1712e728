"""The lifecycle of one attempt of a run: the one owner of what lives from its first file to `run_end`.

`RunLifecycle` is a context manager. Entering it starts this rank's heartbeat thread, installs the
SIGTERM/SIGINT handlers and starts the lost-rank watchdog; `begin` (rank 0) opens metrics.jsonl
with the attempt's `run_start`. Its `coordinator` lets ranks agree outside collectives (stops in
the final phases, rank 0's solo work). Leaving it, on every path, writes exactly one `run_end` for that
`run_start`: `completed` when the block finished (with the final validation loss), `interrupted`
when the ranks agreed to stop for a signal, `failed` with the error in one line otherwise (a
failure before the engine exists included). Then it stops the watchdog, restores the signal
handlers, stops the heartbeat and closes metrics.jsonl. The watchdog's thread may end a run whose
main thread is stuck in a collective: `end` lets only the first caller write.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from pathlib import Path

import orjson

from trainer.lifecycle import signals
from trainer.lifecycle.coordination import Coordinator
from trainer.reporting.events import Alert, RunEnd, RunStart
from trainer.reporting.metrics import Heartbeat, MetricsWriter
from trainer.reporting.runlog import RunLog, Throughput
from trainer.training.config import TrainConfig
from trainer.training.loop import Progress, StopRequested

EXIT_COMPLETED = 0
EXIT_FAILED = 1


def warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr)


class RunLifecycle:
    def __init__(self, run_dir: Path, dist_info, config: TrainConfig, throughput: Throughput, lock=None,
                 notifier=None):
        self.run_dir = run_dir
        self.dist = dist_info
        self.config = config
        # Rank 0's heartbeats also refresh the run's lock (trainer/lifecycle/rundir.py).
        self.heartbeat = Heartbeat(run_dir, dist_info.rank, dist_info.local_rank, config.heartbeat_every,
                                   on_beat=lock.refresh if lock is not None else None)
        self.stop = signals.StopSignals(on_forced_exit=self._forced_stop)
        self.coordinator = Coordinator(dist_info, self.stop, self.heartbeat)
        self.peers = signals.PeerWatch(run_dir / "ranks", dist_info.world_size)
        self.log = RunLog(None, throughput)
        self.notifier = notifier  # rank 0 with --notify-env (trainer.reporting.notify), owned by the pipeline
        self.progress = Progress()  # the loop's, once it exists: run_end reports its step and tokens
        self.final_val_loss: float | None = None  # set when the last phase is done
        self.exit_code = EXIT_FAILED
        self._watchdog: signals.LostRankWatchdog | None = None
        self._writer: MetricsWriter | None = None
        self._ended = False
        self._end_lock = threading.Lock()

    # ---- entering and leaving ----------------------------------------------------------------

    def __enter__(self) -> "RunLifecycle":
        self.heartbeat.start()
        self.stop.install()
        self._watchdog = signals.LostRankWatchdog(
            self.heartbeat, self.peers, self._lost, grace_s=3 * self.config.heartbeat_every + 1
        ).start()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc is None:
                status, error, self.exit_code = "completed", None, EXIT_COMPLETED
            elif isinstance(exc, StopRequested):
                status, self.exit_code = "interrupted", signals.EXIT_INTERRUPTED
                error = (f"stopped by {self.stop.name or 'a signal on another rank'} at step {self.progress.step}; "
                         "resume with --resume")
                self.log.event(Alert(step=self.progress.step, kind="signal", message=error, rank=None))
                self.log.print(f"[yellow]{error}[/]")
            else:
                status, error = "failed", self._describe_failure(exc)
                traceback.print_exception(exc)
            self.end(status, error)
        finally:
            self._close()
        return exc is None or isinstance(exc, Exception)  # the exit code says it; Ctrl-C twice goes on

    def _close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.close()
        self.stop.uninstall()
        self.heartbeat.stop()
        if self._writer is not None:
            self._writer.close()

    # ---- metrics.jsonl -----------------------------------------------------------------------

    def begin(self, run_start: RunStart) -> RunLog:
        """Open metrics.jsonl (rank 0) with this attempt's run_start; from here on a run_end follows."""
        if self.dist.is_main:
            self._writer = MetricsWriter(self.run_dir / "metrics.jsonl")
            self.log = RunLog(self._writer, self.log.throughput, self.notifier, self.run_dir.name)
            self._writer.write(run_start)
        return self.log

    def end(self, status: str, error: str | None) -> None:
        """Write this attempt's run_end, once, whoever calls first (the main or the watchdog thread)."""
        with self._end_lock:
            if self._ended or self._writer is None:
                return
            self._ended = True
            self.log.event(self._run_end(status, error))

    def _run_end(self, status: str, error: str | None) -> RunEnd:
        return RunEnd(status=status, error=error, step=self.progress.step, tokens_total=self.progress.tokens_total,
                      elapsed_s=time.time() - self.log.started,
                      final_val_loss=self.final_val_loss if status == "completed" else None)

    def _forced_stop(self) -> None:
        """Asked to stop twice (in the signal handler; the process exits next): run_end `interrupted`
        now, appended through a file of its own since the handler may have interrupted the
        writer's. Given up when the main thread is writing run_end already (it holds the lock)."""
        if not self._end_lock.acquire(timeout=0.5):
            return
        try:
            if self._ended or self._writer is None:
                return
            self._ended = True
            error = (f"stopped by {self.stop.name} twice at step {self.progress.step}: no checkpoint of this step; "
                     "resume with --resume from the last one")
            with open(self._writer.path, "ab") as f:
                f.write(orjson.dumps(self._run_end("interrupted", error).record()) + b"\n")
        finally:
            self._end_lock.release()

    # ---- failures ----------------------------------------------------------------------------

    def _describe_failure(self, exc: BaseException) -> str:
        """The error in one line, naming the lost ranks (alerted too) when some peer is gone."""
        error = " ".join(f"{type(exc).__name__}: {exc}".split())
        lost = self.peers.lost() if self.dist.world_size > 1 else []
        if lost:
            names = ", ".join(map(str, lost))
            self.log.event(Alert(step=self.progress.step, kind="rank_lost", message=f"lost rank {names}", rank=lost[0]))
            error = f"lost rank {names}: {error}"
        return error

    def _lost(self, ranks: list[int]) -> None:
        """The watchdog's thread, while the main one is stuck in a collective: the run failed."""
        names = ", ".join(map(str, ranks))
        self.log.event(Alert(step=self.progress.step, kind="rank_lost", message=f"lost rank {names}", rank=ranks[0]))
        self.end("failed", f"lost rank {names} (no heartbeat; this rank stuck in a collective)")
        if self.notifier is not None:
            self.notifier.close()  # the process exits next: post what is queued first
