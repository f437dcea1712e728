"""`--resume`: which run to continue, whether it may be continued, and from where.

The run is --out, or without it the newest run under runs/ that did not complete. It continues
from its latest complete checkpoint (trainer/lifecycle/checkpoint.py). A changed model, data file or global
batch would silently make a different run: those are refused, naming what differs, by comparing
with the provenance in the run's config.json. The number of ranks may change (the global batch
stays; the checkpoint is converted to DeepSpeed's universal format).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import orjson

from trainer.lifecycle import checkpoint
from trainer.lifecycle.rundir import held_by_another
from trainer.gpt2.model import GPTConfig, model_name, shape
from trainer.gpt2.weights import describe, read_architecture
from trainer.reporting.metrics import read_events


@dataclass
class ResumePoint:
    run_dir: Path
    attempt: int  # this attempt's number (previous attempts + 1)
    tag: str | None  # checkpoint to load; None: no complete checkpoint yet, start over
    progress: dict | None  # the checkpoint's progress.json
    zero_stage: int  # the stage the checkpoint was written with
    full_val_loss: tuple[int, float] | None  # (step, loss) of a full evaluation logged at the checkpoint's step


def recorded_run(run_dir: Path) -> dict:
    """A run's config.json, checked to hold what a resume reads (one line if not)."""
    config_file = run_dir / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{run_dir}: not a run directory (no config.json) to resume")
    try:
        recorded = orjson.loads(config_file.read_bytes())
        fields = (recorded["v"], recorded["config"]["global_batch"], recorded["provenance"]["data"]["sha256"],
                  recorded["ds_config"]["zero_optimization"]["stage"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        fields = None
    if fields is None or fields[0] != 1:
        raise ValueError(f"{config_file}: not a run config.json of this version of gpt2-instruct; resume it with "
                         "the version that started it, or start a new run")
    return recorded


def run_status(run_dir: Path) -> str | None:
    """The status of the last run_end, or None when the last attempt has none (killed)."""
    status = None
    for event in read_events(run_dir / "metrics.jsonl"):
        if event.get("type") == "run_start":
            status = None
        elif event.get("type") == "run_end":
            status = event.get("status")
    return status


def newest_unfinished(runs_root: Path) -> Path:
    """The newest run under runs_root that did not complete and that no live launcher holds."""
    candidates = [
        p for p in runs_root.glob("*/config.json") if run_status(p.parent) != "completed" and not held_by_another(p.parent)
    ] if runs_root.is_dir() else []
    if not candidates:
        raise ValueError(f"no unfinished run under {runs_root}/ to resume: pass --out RUN_DIR")
    return max(candidates, key=lambda p: p.stat().st_mtime).parent


def find(out: str | None, model: GPTConfig, data_sha256: str, global_batch: int) -> ResumePoint:
    run_dir = Path(out) if out else newest_unfinished(Path("runs"))
    recorded = recorded_run(run_dir)
    trained = read_architecture(run_dir / "config.json", dropout=0.0, tied=True)
    if shape(trained) != shape(model):
        raise ValueError(f"{run_dir}: cannot resume with another model: the run trains {model_name(trained)} "
                         f"({describe(trained)}), now {model_name(model)} ({describe(model)})")
    then = {"--data (sha256)": recorded["provenance"]["data"]["sha256"], "--global-batch": recorded["config"]["global_batch"]}
    now = {"--data (sha256)": data_sha256, "--global-batch": global_batch}
    for what in then:
        if then[what] != now[what]:
            raise ValueError(
                f"{run_dir}: cannot resume with a different {what}: the run has {then[what]}, now {now[what]}"
            )
    if run_status(run_dir) == "completed":
        raise ValueError(f"{run_dir}: the run already completed; nothing to resume")
    directory = checkpoint.checkpoint_dir(run_dir)
    tag = checkpoint.latest_tag(directory) if directory.is_dir() else None
    events = read_events(run_dir / "metrics.jsonl")
    progress = checkpoint.read_progress(directory, tag) if tag else None
    return ResumePoint(
        run_dir=run_dir,
        attempt=sum(1 for e in events if e.get("type") == "run_start") + 1,
        tag=tag,
        progress=progress,
        zero_stage=recorded["ds_config"]["zero_optimization"]["stage"],
        full_val_loss=full_evaluation_at(events, progress["step"]) if progress else None,
    )


def full_evaluation_at(events: list[dict], step: int) -> tuple[int, float] | None:
    """The loss of a full evaluation logged at `step` by an attempt whose weights there are the
    checkpoint's (docs/metrics.md, "Resumed runs": a later run_start drops what follows its step)."""
    found = None
    for event in events:
        if event.get("type") == "run_start" and found and found[0] > event.get("resumed_from_step", 0):
            found = None
        elif event.get("type") == "eval" and event.get("full") and event.get("step") == step:
            found = (step, event["val_loss"])
    return found
