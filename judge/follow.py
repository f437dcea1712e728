"""`python -m judge follow RUN_DIR`: score a training run's judged evaluations as they appear.

A run with `--judge-samples K` writes `evals/step-<N>.json` at its judged evaluations
(docs/metrics.md). This polls the run directory, as the dashboard does (on NFS, inotify misses
other hosts' writes), scores each new file with `score`'s machinery into `step-<N>.scored.json`
and `step-<N>.scored.summary.json` beside it, and exits once the run has ended (its last
`run_start` has a `run_end`, or metrics.jsonl has not grown for `--stall-after` seconds) and every
file is scored. A file is scored when its summary exists with no failed entry: failed ones are
tried again at the next poll. Ctrl-C leaves nothing half-written (scores are journalled, files
written atomically), and a rerun resumes.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import orjson

EVAL_FILE = re.compile(r"step-(\d+)\.json")
TAIL_BYTES = 256 * 1024  # where a run's latest run_start or run_end is, in a long metrics.jsonl


def eval_files(run_dir: Path) -> list[Path]:
    """The judged evaluations written so far, by step."""
    found = [p for p in (run_dir / "evals").glob("step-*.json") if EVAL_FILE.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(EVAL_FILE.fullmatch(p.name).group(1)))


def summary_of(path: Path) -> Path:
    return path.with_name(path.stem + ".scored.summary.json")


def is_scored(path: Path) -> bool:
    try:
        summary = orjson.loads(summary_of(path).read_bytes())
        return all(key["failed"] == 0 for key in summary["keys"].values())
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return False


@dataclass
class RunWatch:
    """Whether the run has ended: the last run_start or run_end of metrics.jsonl is a run_end, or
    the file has not grown for `stall_after_s` by this process's clock (dated by its modification
    time until seen growing, as the dashboard dates a first look)."""

    metrics: Path
    stall_after_s: float
    clock: Callable[[], float] = time.monotonic
    size: int | None = None
    grew_at: float | None = None

    def ended(self) -> bool:
        try:
            stat = os.stat(self.metrics)
        except FileNotFoundError:
            return False
        if self.grew_at is None:
            self.grew_at = self.clock() - max(0.0, time.time() - stat.st_mtime)
        elif stat.st_size != self.size:
            self.grew_at = self.clock()
        self.size = stat.st_size
        return self._last_is_run_end() or self.clock() - self.grew_at > self.stall_after_s

    def _last_is_run_end(self) -> bool:
        with open(self.metrics, "rb") as f:
            f.seek(max(0, self.size - TAIL_BYTES))
            tail = f.read()
        last = None
        for line in tail.splitlines():
            if b'"run_start"' in line or b'"run_end"' in line:
                try:
                    last = orjson.loads(line).get("type")
                except (orjson.JSONDecodeError, AttributeError):
                    continue
        return last == "run_end"


def follow(run_dir: Path, score: Callable[[Path], None], watch: RunWatch, interval_s: float, say=print) -> list[Path]:
    """Score every judged evaluation as it appears until the run has ended and all are scored; the
    files still not scored then (their entries failed, or the server was down: a rerun retries)."""
    while True:
        ended = watch.ended()  # first: a file written just before run_end is scored before leaving
        scored = set()
        for path in eval_files(run_dir):
            if is_scored(path):
                scored.add(path)
                continue
            say(f"scoring {path.relative_to(run_dir)}")
            score(path)
        # Listed again: a file that appeared meanwhile is not scored yet.
        unscored = [path for path in eval_files(run_dir) if path not in scored and not is_scored(path)]
        if ended:
            return unscored
        time.sleep(interval_s)
