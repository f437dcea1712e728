"""The runs under a directory such as `runs/`: one summary per run directory, for the runs list
(`python -m tui runs/`) and its `--once` text, sorted by any column; and the differences
between runs' configs, for a comparison.

A listing must stay cheap however many and however long the runs: it reads each
`metrics.jsonl`'s first line (the first `run_start`) and its last TAIL_BYTES (the latest step,
resume, end and judge), and the test responses' small judge summary, never the whole file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import orjson

from tui.fields import object_field, text_field
from tui.follow import parse_lines, read_judge_summary
from tui.format import format_duration, format_loss
from tui.quality import FINAL_SUMMARY, FinalJudge
from tui.state import RunState, Thresholds

TAIL_BYTES = 256 * 1024


@dataclass
class RunSummary:
    path: Path
    status: str
    model: str
    step: int
    total_steps: int | None
    final_val_loss: float | None  # the whole validation split's, with the final weights
    judge: FinalJudge | None  # the judge's verdict on the test responses
    duration_s: float | None  # from the first run_start to the end (or the latest event)
    last_write: float  # metrics.jsonl's mtime: the default order is newest first

    @classmethod
    def of(cls, path: Path, state: RunState, now: float, last_write: float) -> RunSummary:
        return cls(
            path=path,
            status=state.status(now),
            model=text_field(state.run_start or {}, "model", "?"),
            step=state.step(),
            total_steps=state.total_steps(),
            final_val_loss=state.final_val(),
            judge=state.final_judge(),
            duration_s=state.duration(),
            last_write=last_write,
        )

    @property
    def name(self) -> str:
        return self.path.name

    def cells(self) -> tuple[str, ...]:
        """One row of the listing, in COLUMNS order."""
        judge = self.judge
        tuned = judge.tuned.short() if judge and judge.tuned else "-"
        difference = judge.difference.short(signed=True) if judge and judge.difference else "-"
        return (self.name, self.model, self.status, f"{self.step}/{self.total_steps or '?'}",
                format_loss(self.final_val_loss), tuned, difference, format_duration(self.duration_s))


@dataclass(frozen=True)
class Column:
    title: str
    meaning: str
    sort_key: Callable[[RunSummary], object]  # None sorts last, whichever the direction
    numeric: bool = False  # right-aligned


def judge_mean(summary: RunSummary) -> float | None:
    judge = summary.judge
    return judge.tuned.mean if judge and judge.tuned else None


def judge_difference(summary: RunSummary) -> float | None:
    judge = summary.judge
    return judge.difference.mean if judge and judge.difference else None


COLUMNS = (
    Column("run", "the run directory's name", lambda s: s.name),
    Column("model", "the model preset", lambda s: s.model),
    Column("status", "as in the dashboard", lambda s: s.status),
    Column("steps", "the last step / the total", lambda s: s.step, numeric=True),
    Column("val", "the final validation loss (whole split)", lambda s: s.final_val_loss, numeric=True),
    Column("judge", "test responses' mean score ± half its 95% CI", judge_mean, numeric=True),
    Column("tuned−base", "tuned minus base, paired, ± half its 95% CI", judge_difference, numeric=True),
    Column("duration", "from the first start to the end", lambda s: s.duration_s, numeric=True),
)


def sort_runs(summaries: list[RunSummary], column: int | None, reverse: bool = False) -> list[RunSummary]:
    """By COLUMNS[column] (unknown values last), or newest first when `column` is None."""
    if column is None:
        return sorted(summaries, key=lambda s: s.last_write, reverse=True)
    key = COLUMNS[column].sort_key
    known = [s for s in summaries if key(s) is not None]
    return sorted(known, key=key, reverse=reverse) + [s for s in summaries if key(s) is None]


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
        return summarize_unstarted(run_dir, now, thresholds)
    head_events = []
    if size > TAIL_BYTES:
        tail = tail[tail.find(b"\n") + 1 :]  # the tail's first line is cut
        head_events = [e for e in parse_lines(head)[0] if e["type"] == "run_start"]
    events = head_events + parse_lines(tail[: tail.rfind(b"\n") + 1])[0]
    state = RunState(thresholds)
    state.apply_events(events, now)
    # Here the file's mtime stands for "when it last grew": a listing has no earlier look.
    state.last_news = mtime
    # Of the judge summaries, only the test responses' (small) one.
    name = text_field(state.judge_end or {}, "summary", FINAL_SUMMARY)
    if (run_dir / name).is_file():
        state.judge = {name: read_judge_summary(run_dir / name)}
    return RunSummary.of(run_dir, state, now, last_write=mtime)


def summarize_unstarted(run_dir: Path, now: float, thresholds: Thresholds) -> RunSummary | None:
    """A run without metrics.jsonl (planning, or killed while planning), dated by the newest of
    config.json and its heartbeat files as the dashboard dates it; None when it has none."""
    dates = []
    for path in [run_dir / "config.json", *run_dir.glob("ranks/rank-*.jsonl")]:
        try:
            dates.append(path.stat().st_mtime)
        except OSError:
            continue
    if not dates:
        return None
    state = RunState(thresholds)
    state.last_news = max(dates)
    return RunSummary.of(run_dir, state, now, last_write=max(dates))


def list_runs(root: Path, now: float, thresholds: Thresholds) -> list[RunSummary]:
    """Every run directory directly under `root`, newest first."""
    summaries = []
    for child in root.iterdir():
        if child.is_dir() and is_run_dir(child):
            summary = summarize_run(child, now, thresholds)
            if summary is not None:
                summaries.append(summary)
    return sort_runs(summaries, None)


def read_config(run_dir: Path) -> dict | str:
    """config.json's `config` object (docs/metrics.md), or one line saying why there is none."""
    try:
        document = orjson.loads((run_dir / "config.json").read_bytes())
    except FileNotFoundError:
        return "no config.json"
    except (OSError, orjson.JSONDecodeError) as e:
        return f"config.json unreadable: {e}"
    config = object_field(document, "config") if isinstance(document, dict) else {}
    return config or "config.json has no `config` object"


def config_differences(configs: list[dict | str]) -> list[tuple[str, list[str]]]:
    """The keys whose values differ between the readable configs (or that some lack), each with
    every run's value as text ("-" where missing or unreadable), sorted by key."""
    readable = [config for config in configs if isinstance(config, dict)]
    rows = []
    for key in sorted({key for config in readable for key in config}):
        if len({orjson.dumps(config.get(key)) if key in config else None for config in readable}) > 1:
            rows.append((key, [value_text(config, key) for config in configs]))
    return rows


def value_text(config: dict | str, key: str) -> str:
    """A config value: a string without its quotes, a float as Python writes it (5e-05), else
    JSON; "-" where there is none."""
    if not isinstance(config, dict) or key not in config:
        return "-"
    value = config[key]
    if isinstance(value, str):
        return value
    return repr(value) if isinstance(value, float) else orjson.dumps(value).decode()
