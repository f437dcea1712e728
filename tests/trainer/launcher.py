"""Run `deepspeed launch/train.py` for real (CPU, gloo) from the tests, and read what it wrote."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import orjson
import psutil

from testkit.launcher import free_port, kill_group, start  # noqa: F401 (the tests' names for them)
from testkit.paths import INSTRUCTION_DATA as DATA
from testkit.paths import REPO  # noqa: F401
from testkit.paths import TOKENIZER_DIR as TOKENIZER
from trainer.reporting.metrics import read_events

# The tiny preset on the chapter's data, quick to train and to generate from.
TINY = ["--model", "tiny", "--weights", "none", "--data", str(DATA), "--tokenizer-dir", str(TOKENIZER)]


def shared_memory_buffers(port: int) -> list[Path]:
    """DeepSpeed's CPU all-reduce buffers of the job on this master port still named in /dev/shm."""
    return sorted(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"))


def wait(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, _ = proc.communicate()
        raise AssertionError(f"launcher still running after {timeout}s:\n{out[-4000:]}")
    return proc.returncode, out


def train(args: list[str], ranks: int = 2, timeout: float = 300, launcher_args: list[str] | None = None) -> tuple[int, str]:
    return wait(start(args, ranks, launcher_args), timeout)


def events(run_dir: Path, name: str = "metrics.jsonl") -> list[dict]:
    return [orjson.loads(line) for line in (Path(run_dir) / name).read_bytes().splitlines() if line.strip()]


def of_type(evs: list[dict], type_: str) -> list[dict]:
    return [e for e in evs if e["type"] == type_]


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def step_logged(run_dir: Path, step: int) -> bool:
    """Polled while the run writes: a half-written last line is skipped."""
    return any(e["type"] == "train" and e["step"] >= step for e in read_events(run_dir / "metrics.jsonl"))


def rank_processes(run_dir: Path) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if str(run_dir) in " ".join(p.info["cmdline"] or []):
                found.append(p)
        except psutil.Error:
            pass
    return found
