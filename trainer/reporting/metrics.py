"""Where a run's events go while it runs: metrics.jsonl (rank 0) and each rank's heartbeat file.

The format is the contract of docs/metrics.md, defined in code by trainer/reporting/events.py;
the dashboard reads these files and nothing else. Global rank 0 writes metrics.jsonl; every rank
writes its own heartbeat file from a background thread, so a hung rank stays visible while the
others wait in a collective.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import orjson

from trainer.reporting.events import PHASES, Event, System


def read_events(path: Path) -> list[dict]:
    """The events of a metrics.jsonl, in order; a line cut by a kill is skipped."""
    events = []
    if Path(path).is_file():
        for line in Path(path).read_bytes().splitlines():
            try:
                events.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue
    return events


class MetricsWriter:
    """Appends events to <run>/metrics.jsonl, flushed per event. Only global rank 0 has one."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.file = open(self.path, "ab")

    def write(self, event: Event) -> None:
        self.file.write(orjson.dumps(event.record()) + b"\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class Heartbeat:
    """A daemon thread appending a `system` line to <run>/ranks/rank-<N>.jsonl every few seconds.

    The training loop only assigns `phase` and `step` (plain attribute writes, no locks, never a
    collective); the thread reads them. Each write opens, appends and closes the file, so readers
    on other hosts of an NFS mount see it.
    """

    def __init__(self, run_dir: Path, rank: int, local_rank: int, every_s: float = 2.0, on_beat=None):
        import psutil  # the trainer's dependency; imported here to keep `import trainer` light

        self.path = Path(run_dir) / "ranks" / f"rank-{rank}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rank = rank
        self.local_rank = local_rank
        self.host = socket.gethostname()
        self.every_s = every_s
        self.on_beat = on_beat  # called after each line (rank 0 refreshes the run's lock)
        self.step = 0
        self._phase = "idle"
        self.phase_since = time.time()
        self._process = psutil.Process(os.getpid())
        self._process.cpu_percent()  # the first call starts the measurement interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-rank{rank}", daemon=True)

    @property
    def phase(self) -> str:
        return self._phase

    @phase.setter
    def phase(self, value: str) -> None:
        if value not in PHASES:
            raise ValueError(f"heartbeat phase {value!r} is not one of docs/metrics.md's {PHASES}")
        if value != self._phase:
            self._phase = value
            self.phase_since = time.time()

    def start(self) -> "Heartbeat":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.every_s + 5)
        self.beat()  # a last line with the final phase

    def _run(self) -> None:
        while True:
            self.beat()
            if self._stop.wait(self.every_s):
                return

    def beat(self) -> None:
        gpu_util = gpu_used = gpu_total = None
        try:
            import torch

            if torch.cuda.is_available():
                free, gpu_total = torch.cuda.mem_get_info(self.local_rank)
                gpu_used = gpu_total - free
                try:
                    gpu_util = float(torch.cuda.utilization(self.local_rank))
                except Exception:  # NVML (nvidia-ml-py) missing or failing; the memory figures still stand
                    gpu_util = None
        except Exception:
            pass
        record = System(
            host=self.host,
            rank=self.rank,
            local_rank=self.local_rank,
            pid=os.getpid(),
            step=self.step,
            phase=self._phase,
            phase_since=self.phase_since,
            cpu_percent=self._process.cpu_percent(),
            rss_bytes=self._process.memory_info().rss,
            gpu_util_percent=gpu_util,
            gpu_mem_used_bytes=gpu_used,
            gpu_mem_total_bytes=gpu_total,
        ).record()
        try:
            with open(self.path, "ab") as f:
                f.write(orjson.dumps(record) + b"\n")
            if self.on_beat is not None:
                self.on_beat()
        except OSError:
            pass  # a full or vanished disk must not kill training from a side thread
