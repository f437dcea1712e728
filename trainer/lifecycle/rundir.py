"""The run directory: chosen once by global rank 0, shared by every rank, described by config.json,
held by one launcher at a time.

config.json holds the resolved config, the DeepSpeed config, library versions, world size, hosts
and provenance (sha256 of the data file, the tokenizer files and the initial weights; the git
commit when there is one), so that a run can be reproduced and a resume can check it continues
the same run.

A new run's directory is created exclusively (a name taken by a run started in the same second
gets a suffix), and `--out` may name a new or empty directory or a run of this project, never a
folder of other files. While a run runs, `run.lock` says who runs it (host, pid, start) and when
it last said so (`refreshed`, rewritten with rank 0's heartbeats): a second launcher, or a
`--resume`, refuses it. A lock is stale when its process is gone (same host) or it has not been
refreshed for LOCK_STALE_S (another host: room for a shared filesystem's lag and clock skew); a
stale lock is taken over, with a message.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import time
from pathlib import Path

import orjson
import psutil

from instruct import atomic_write_json

REPO = Path(__file__).resolve().parents[2]
LOCK = "run.lock"
LOCK_STALE_S = 120.0


def is_run_dir(path: Path) -> bool:
    """A directory this project wrote a run into."""
    return (path / "metrics.jsonl").is_file() or (path / "config.json").is_file() and (path / "ranks").is_dir()


def create_run_dir(out: str | None, model: str, runs_root: Path = Path("runs")) -> Path:
    """A new run's directory, created here: --out (new or empty), else runs/<timestamp>-<model>,
    made exclusively so that two runs started in the same second get two directories."""
    if out:
        chosen = Path(out)
        if chosen.exists() and not chosen.is_dir():
            raise ValueError(f"--out {chosen}: is a file, not a directory")
        if chosen.is_dir() and is_run_dir(chosen):
            raise ValueError(f"{chosen}: already holds a run: pass --resume to continue it, or another --out")
        if chosen.is_dir() and any(chosen.iterdir()):
            raise ValueError(f"--out {chosen}: is not empty and holds no run of this project: name a new or empty "
                             "directory")
        chosen.mkdir(parents=True, exist_ok=True)
        return chosen
    base = runs_root / f"{time.strftime('%Y%m%d-%H%M%S')}-{model}"
    runs_root.mkdir(parents=True, exist_ok=True)
    for suffix in ["", *(f"-{n}" for n in range(2, 1000))]:
        try:
            (chosen := base.with_name(base.name + suffix)).mkdir()
            return chosen
        except FileExistsError:
            continue
    raise ValueError(f"{runs_root}: no free name for a new run after {base.name}-999")


class RunLock:
    """run.lock of a run directory, held by rank 0 of the launcher that runs it."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        self.record = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}

    @classmethod
    def take(cls, run_dir: Path, say=print) -> "RunLock":
        """Hold the run, or raise ValueError naming who runs it; a stale lock is taken over. Two
        launchers taking it at once: one wins (the lock file is created exclusively)."""
        lock = cls(run_dir)
        for _ in range(3):
            if lock._create():
                return lock
            holder = lock.holder()
            if holder is None and not lock.path.exists():
                continue  # released right now: create it again
            why = lock.stale(holder or {})
            if why is None:
                raise ValueError(
                    f"{run_dir}: is being run by pid {holder.get('pid')} on {holder.get('host')} (since "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder.get('started', 0)))}); if it is "
                    f"not, its lock goes stale {LOCK_STALE_S:.0f} s after its last refresh, or delete {lock.path}")
            say(f"taking over the stale lock of {lock.path} ({why})")
            lock._remove_stale(holder or {})
        raise ValueError(f"{run_dir}: another launcher is taking over this run right now")

    def _create(self) -> bool:
        """Create run.lock unless it exists (a hard link of a complete file: atomic, NFS included)."""
        made = self.path.with_name(f".{LOCK}.{self.record['host']}.{self.record['pid']}.tmp")
        made.write_bytes(orjson.dumps({**self.record, "refreshed": time.time()}))
        try:
            os.link(made, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            made.unlink()

    def _remove_stale(self, holder: dict) -> None:
        """Move the stale lock aside and delete it; a lock another taker made meanwhile is put back."""
        aside = self.path.with_name(f".{LOCK}.stale.{self.record['host']}.{self.record['pid']}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another taker moved it first
        if (read_holder(aside) or {}) != holder:
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
        aside.unlink()

    def holder(self) -> dict | None:
        return read_holder(self.path)

    def stale(self, holder: dict) -> str | None:
        """Why the holder's lock is stale, or None while it holds."""
        if not holder:
            return "it is unreadable"
        if holder.get("host") == self.record["host"] and isinstance(holder.get("pid"), int):
            try:
                if psutil.Process(holder["pid"]).status() != psutil.STATUS_ZOMBIE:
                    return None
            except psutil.NoSuchProcess:
                pass
            return f"pid {holder['pid']} is gone"
        refreshed = holder.get("refreshed")
        if isinstance(refreshed, (int, float)) and time.time() - refreshed <= LOCK_STALE_S:
            return None
        return f"not refreshed for more than {LOCK_STALE_S:.0f} s"

    def refresh(self) -> None:
        atomic_write_json(self.path, {**self.record, "refreshed": time.time()})

    def release(self) -> None:
        """Remove the lock if it is still this process's (a taker may have replaced a stale one)."""
        holder = self.holder() or {}
        if all(holder.get(key) == value for key, value in self.record.items()):
            self.path.unlink(missing_ok=True)


def read_holder(path: Path) -> dict | None:
    """A lock file's record; None when it is missing or unreadable."""
    try:
        holder = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return holder if isinstance(holder, dict) else None


def held_by_another(run_dir: Path) -> bool:
    """Whether a live run holds this directory (for --resume without --out, which skips it)."""
    lock = RunLock(run_dir)
    holder = lock.holder()
    return holder is not None and lock.stale(holder) is None


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
