"""What a run tells the outside world while it runs: metrics.jsonl, rank heartbeats, and MFU.

The format is the contract of docs/metrics.md (schema v1); the dashboard reads these files and
nothing else. Global rank 0 writes metrics.jsonl; every rank writes its own heartbeat file from a
background thread, so a hung rank stays visible while the others wait in a collective.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from pathlib import Path

import orjson

SCHEMA_VERSION = 1
PHASES = ("data", "forward", "backward", "step", "eval", "generate", "checkpoint", "idle")

# Dense peak throughput in FLOP/s by device-name words and dtype (docs/metrics.md).
# Checked in order: the first found as whole words in torch.cuda.get_device_name() wins
# ("NVIDIA L4" is an L4; "NVIDIA L40S" is not).
PEAK_FLOPS = [
    ("H100 PCIe", {"bf16": 756e12, "fp16": 756e12, "fp32": 51e12}),
    ("H100", {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}),
    ("H200", {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}),
    ("A100", {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12}),
    ("L4", {"bf16": 121e12, "fp16": 121e12, "fp32": 30e12}),
]


def peak_flops(device_name: str | None, precision: str) -> float | None:
    """The device's dense peak for `precision` ("bf16", "fp16", "fp32"); None when unknown."""
    if not device_name:
        return None
    for words, peaks in PEAK_FLOPS:
        if re.search(rf"\b{re.escape(words)}\b", device_name):
            return peaks.get(precision)
    return None


def flops_per_token(non_embedding_params: int, n_layers: int, emb_dim: int, seq_len: int) -> float:
    """Training FLOPs per token: nanoGPT's estimate_mfu, after PaLM (Chowdhery et al. 2022, app. B).

    6N for the forward and backward matmuls of the weights plus 12 * L * d * T for attention's
    QK^T and AV. N excludes the position embedding (a lookup, no matmul) but keeps the token
    embedding, which is also the output head.
    """
    return 6 * non_embedding_params + 12 * n_layers * emb_dim * seq_len


def mfu(
    tokens_per_s_per_device: float,
    non_embedding_params: int,
    n_layers: int,
    emb_dim: int,
    seq_len: int,
    device_name: str | None,
    precision: str,
) -> float | None:
    """Model FLOPs utilisation in 0..1; None when the device's peak is unknown (e.g. a CPU)."""
    peak = peak_flops(device_name, precision)
    if peak is None:
        return None
    achieved = flops_per_token(non_embedding_params, n_layers, emb_dim, seq_len) * tokens_per_s_per_device
    return achieved / peak


def compiled_graphs() -> int:
    """Graphs torch.compile has compiled in this process so far (dynamo's counter, which
    torch._dynamo.reset() does not reset): the benchmarks and tests count recompilations with it."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def event(type_: str, **fields) -> dict:
    return {"v": SCHEMA_VERSION, "type": type_, "time": time.time(), **fields}


class MetricsWriter:
    """Appends events to <run>/metrics.jsonl, flushed per event. Only global rank 0 has one."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.file = open(self.path, "ab")

    def write(self, type_: str, **fields) -> dict:
        record = event(type_, **fields)
        self.file.write(orjson.dumps(record) + b"\n")
        self.file.flush()
        return record

    def close(self) -> None:
        self.file.close()


class Heartbeat:
    """A daemon thread appending a `system` line to <run>/ranks/rank-<N>.jsonl every few seconds.

    The training loop only assigns `phase` and `step` (plain attribute writes, no locks, never a
    collective); the thread reads them. Each write opens, appends and closes the file, so readers
    on other hosts of an NFS mount see it.
    """

    def __init__(self, run_dir: Path, rank: int, local_rank: int, every_s: float = 2.0):
        import psutil  # the trainer's dependency; imported here to keep `import trainer` light

        self.path = Path(run_dir) / "ranks" / f"rank-{rank}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rank = rank
        self.local_rank = local_rank
        self.host = socket.gethostname()
        self.every_s = every_s
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
        record = event(
            "system",
            host=self.host,
            rank=self.rank,
            local_rank=self.local_rank,
            step=self.step,
            phase=self._phase,
            phase_since=self.phase_since,
            cpu_percent=self._process.cpu_percent(),
            rss_bytes=self._process.memory_info().rss,
            gpu_util_percent=gpu_util,
            gpu_mem_used_bytes=gpu_used,
            gpu_mem_total_bytes=gpu_total,
        )
        try:
            with open(self.path, "ab") as f:
                f.write(orjson.dumps(record) + b"\n")
        except OSError:
            pass  # a full or vanished disk must not kill training from a side thread
