"""Checkpoints that are complete or invisible, and resuming from them exactly.

Layout under <run>/checkpoints/:

    global_step<N>/            DeepSpeed's files (model, optimizer and schedule state, all ranks)
      progress.json            the data position (step, epoch, batches consumed) and world size
      rng-rank<R>.pt           each rank's RNG states (DeepSpeed keeps client_state of rank 0 only)
    global_step<N>_universal/  made on demand to resume on another number of ranks
    latest                     the tag of the newest complete checkpoint

DeepSpeed's own `latest` file is written by rank 0 before the other ranks have finished their
shards (see ../shared/notes/deepspeed.md), so a kill at that moment could name a half-written
checkpoint. Here every rank saves with save_latest=False, all ranks meet at a barrier, and only
then does rank 0 write `latest` (temporary file + rename) and delete old checkpoints.

DeepSpeed loads its own files with torch.load(weights_only=False): resume only run directories
this tool wrote. The files this module reads itself load with weights_only=True.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import torch
import torch.distributed as dist

from instruct import atomic_write_json, atomic_write_text
from trainer.training.loop import Progress

POINTER = "latest"
TAG = re.compile(r"^global_step(\d+)$")


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def rng_state() -> dict:
    """This rank's RNG states: the CPU's, and its own GPU's (the current device, set at start-up),
    not every visible GPU's, so that a resume on nodes with fewer GPUs can restore it."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save(engine, run_dir: Path, progress: dict, rank: int, world_size: int, keep: int) -> str:
    """Collective: every rank calls it. Returns the tag once the checkpoint is complete."""
    directory = checkpoint_dir(run_dir)
    tag = f"global_step{progress['step']}"
    engine.save_checkpoint(str(directory), tag=tag, save_latest=False)
    torch.save(rng_state(), directory / tag / f"rng-rank{rank}.pt")
    if rank == 0:
        atomic_write_json(directory / tag / "progress.json", {**progress, "world_size": world_size})
    dist.barrier()  # every rank's shards and RNG file are on disk
    if rank == 0:
        atomic_write_text(directory / POINTER, tag + "\n")
        for old in complete_tags(directory)[:-keep]:
            shutil.rmtree(directory / old, ignore_errors=True)
            shutil.rmtree(directory / f"{old}_universal", ignore_errors=True)
    dist.barrier()
    return tag


def complete_tags(directory: Path) -> list[str]:
    """Tags up to the one `latest` names, oldest first (later ones are incomplete)."""
    latest = latest_tag(directory)
    if latest is None:
        return []
    limit = int(TAG.match(latest).group(1))
    steps = sorted(int(m.group(1)) for p in directory.iterdir() if (m := TAG.match(p.name)))
    return [f"global_step{s}" for s in steps if s <= limit]


def latest_tag(directory: Path) -> str | None:
    """The tag `latest` names, or None when there is no pointer or its checkpoint is gone. The
    pointer is written whole (temporary file, then rename): any other content is damage, one line."""
    pointer = Path(directory) / POINTER
    if not pointer.is_file():
        return None
    try:
        tag = pointer.read_bytes().decode().strip()
    except UnicodeDecodeError:
        tag = None
    if tag is None or not TAG.match(tag):
        raise ValueError(f"{pointer}: not a checkpoint pointer (it holds one line such as global_step40)")
    return tag if (Path(directory) / tag).is_dir() else None


def read_progress(directory: Path, tag: str) -> dict:
    """A checkpoint's progress.json, checked to hold every field a resume sets (one line if not)."""
    path = Path(directory) / tag / "progress.json"
    try:
        progress = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise ValueError(f"{path}: not found: the checkpoint `latest` names is damaged") from None
    except (OSError, orjson.JSONDecodeError) as e:
        raise ValueError(f"{path}: not readable JSON ({' '.join(str(e).split())[:120]})") from None
    fields = (*Progress.__dataclass_fields__, "world_size")
    if not (isinstance(progress, dict)
            and all(isinstance(progress.get(f), int) and not isinstance(progress[f], bool) for f in fields)):
        raise ValueError(f"{path}: not a checkpoint's progress (integers {', '.join(fields)})")
    return progress


def to_universal(directory: Path, tag: str, zero_stage: int) -> str:
    """Convert a checkpoint to DeepSpeed's universal format (for another number of ranks).

    Run by one process; the others wait at a barrier. ZeRO-2 checkpoints lack some optimizer
    state the converter expects: --inject_missing_state supplies it (the notes).
    """
    universal = f"{tag}_universal"
    target = Path(directory) / universal
    if target.is_dir():
        return universal
    tmp = Path(directory) / f".{universal}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal",
           "--input_folder", str(Path(directory) / tag), "--output_folder", str(tmp)]
    if zero_stage < 3:
        cmd.append("--inject_missing_state")
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"converting {tag} to the universal format failed: {tail[0]}")
    tmp.rename(target)
    return universal


def load(engine, directory: Path, tag: str, rank: int, same_world: bool) -> None:
    """Every rank: DeepSpeed state, then this rank's RNG states (same world size only)."""
    path, _ = engine.load_checkpoint(
        str(directory), tag=tag, load_module_strict=True, load_optimizer_states=True,
        load_lr_scheduler_states=True,
    )
    if path is None:
        raise RuntimeError(f"{directory / tag}: DeepSpeed found no checkpoint to load")
    rng_file = Path(directory) / tag / f"rng-rank{rank}.pt"
    if same_world and rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=True))

