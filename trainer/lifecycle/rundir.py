"""The run directory: chosen once by global rank 0, shared by every rank, described by config.json.

config.json holds the resolved config, the DeepSpeed config, library versions, world size, hosts
and provenance (sha256 of the data file, the tokenizer files and the initial weights; the git
commit when there is one), so that a run can be reproduced and a resume can check it continues
the same run.
"""

from __future__ import annotations

import platform
import subprocess
import time
from pathlib import Path

from instruct import atomic_write_json

REPO = Path(__file__).resolve().parent.parent


def default_run_dir(model: str, runs_root: Path = Path("runs")) -> Path:
    return runs_root / f"{time.strftime('%Y%m%d-%H%M%S')}-{model}"


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def versions() -> dict:
    import deepspeed
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "deepspeed": deepspeed.__version__,
        "cuda": torch.version.cuda,
    }


def write_config(run_dir: Path, record: dict) -> None:
    atomic_write_json(run_dir / "config.json", record)
