"""Start `deepspeed launch/train.py` for real (CPU, gloo) from tests and benchmarks, and stop it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

from testkit.paths import REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(extra: dict[str, str] | None = None) -> dict:
    e = dict(os.environ)
    e["DS_ACCELERATOR"] = "cpu"
    e["PYTHONUNBUFFERED"] = "1"
    e.setdefault("OMP_NUM_THREADS", "1")  # two ranks share two cores
    return {**e, **(extra or {})}


def start(args: list[str], ranks: int = 2, launcher_args: list[str] | None = None, extra_env: dict | None = None,
          **popen) -> subprocess.Popen:
    """Start a launcher in its own process group (so that it can be signalled or killed whole).

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
        cmd, cwd=REPO, env=env(extra_env), start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen,
    )
    proc.master_port = port
    return proc


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
