"""Run `deepspeed launch/train.py` for real (CPU, gloo) from the tests, and read what it wrote."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("GPT2_INSTRUCT_SHARED", REPO.parent / "shared"))
DATA = SHARED / "data" / "instruction-data.json"
TOKENIZER = SHARED / "tokenizer" / "gpt2"

# The tiny preset on the chapter's data, quick to train and to generate from.
TINY = ["--model", "tiny", "--weights", "none", "--data", str(DATA), "--tokenizer-dir", str(TOKENIZER)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict:
    e = dict(os.environ)
    e["DS_ACCELERATOR"] = "cpu"
    e["PYTHONUNBUFFERED"] = "1"
    e.setdefault("OMP_NUM_THREADS", "1")  # two ranks share two cores
    return e


def start(args: list[str], ranks: int = 2, launcher_args: list[str] | None = None, **popen) -> subprocess.Popen:
    """Start a launcher in its own process group (so a test can signal or kill all of it).

    The returned process carries the job's `master_port`, which names its shared-memory buffers.
    """
    port = free_port()
    cmd = [
        sys.executable, "-m", "deepspeed.launcher.runner",
        "--num_gpus", str(ranks), "--master_port", str(port),
        *(launcher_args or []),
        str(REPO / "launch" / "train.py"), *args,
    ]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env(), start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen,
    )
    proc.master_port = port
    return proc


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


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def train(args: list[str], ranks: int = 2, timeout: float = 300, launcher_args: list[str] | None = None) -> tuple[int, str]:
    return wait(start(args, ranks, launcher_args), timeout)


def events(run_dir: Path, name: str = "metrics.jsonl") -> list[dict]:
    return [orjson.loads(line) for line in (Path(run_dir) / name).read_bytes().splitlines() if line.strip()]


def of_type(evs: list[dict], type_: str) -> list[dict]:
    return [e for e in evs if e["type"] == type_]
