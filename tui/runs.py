"""The runs under a directory such as `runs/`: one summary per run directory, for the listing
(`python -m tui runs/`) and its `--once` text.

A listing must stay cheap however many and however long the runs: it reads each
`metrics.jsonl`'s first line (the first `run_start`) and its last TAIL_BYTES (the latest step,
loss, resume and end), never the whole file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tui.follow import parse_lines
from tui.format import format_duration, format_loss
from tui.state import RunState, Thresholds

TAIL_BYTES = 256 * 1024
COLUMNS = ("run", "status", "model", "step", "loss", "age")


@dataclass
class RunSummary:
    path: Path
    status: str
    model: str
    step: int
    total_steps: int | None
    last_loss: float | None
    age_s: float  # since metrics.jsonl was last written (its mtime against our clock)

    def cells(self) -> tuple[str, ...]:
        """One row of the listing, in COLUMNS order."""
        return (self.path.name, self.status, self.model, f"{self.step}/{self.total_steps or '?'}",
                format_loss(self.last_loss), format_duration(self.age_s))


def is_run_dir(path: Path) -> bool:
    return (path / "metrics.jsonl").is_file() or (path / "ranks").is_dir()


def summarize_run(run_dir: Path, now: float, thresholds: Thresholds) -> RunSummary | None:
    metrics = run_dir / "metrics.jsonl"
    try:
        with open(metrics, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            mtime = os.fstat(f.fileno()).st_mtime
            head = f.readline(TAIL_BYTES)
            f.seek(max(0, size - TAIL_BYTES))
            tail = f.read()
    except FileNotFoundError:
        return None
    head_events = []
    if size > TAIL_BYTES:
        tail = tail[tail.find(b"\n") + 1 :]  # the tail's first line is cut
        head_events = [e for e in parse_lines(head)[0] if e["type"] == "run_start"]
    tail_events, _ = parse_lines(tail[: tail.rfind(b"\n") + 1])
    state = RunState(thresholds)
    state.apply_events(head_events + tail_events, now)
    # Here the file's mtime stands for "when it last grew": a listing has no earlier look.
    state.metrics_growth = mtime
    start = state.run_start or {}
    return RunSummary(
        path=run_dir,
        status=state.status(now),
        model=str(start.get("model", "?")),
        step=state.step(),
        total_steps=state.total_steps(),
        last_loss=state.series["loss"].last,
        age_s=max(0.0, now - mtime),
    )


def list_runs(root: Path, now: float, thresholds: Thresholds) -> list[RunSummary]:
    """Every run directory directly under `root`, newest first."""
    summaries = []
    for child in root.iterdir():
        if child.is_dir() and is_run_dir(child):
            summary = summarize_run(child, now, thresholds)
            if summary is not None:
                summaries.append(summary)
    return sorted(summaries, key=lambda s: s.age_s)
