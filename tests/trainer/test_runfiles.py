"""Reading a run's own files back: the loss history for loss.png, which run --resume picks, and
the split that --shuffle-split makes."""

from __future__ import annotations

import os
import time

import orjson
import pytest

from trainer.reporting.lossplot import loss_history
from trainer.lifecycle.resume import newest_unfinished, run_status


def write_events(path, events):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(orjson.dumps({"v": 1, "time": 0.0, **e}) + b"\n" for e in events))


def test_loss_history_drops_what_a_resume_replays(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    write_events(metrics, [
        {"type": "run_start", "resumed_from_step": 0},
        *({"type": "train", "step": s, "tokens_total": 10 * s, "loss": 5.0 - s} for s in (1, 2, 3)),
        {"type": "eval", "step": 1, "train_loss": 4.0, "val_loss": 4.5, "full": False},
        {"type": "eval", "step": 3, "train_loss": 2.0, "val_loss": 2.5, "full": False},
        {"type": "run_start", "resumed_from_step": 2},  # killed after step 3; checkpoint at 2
        {"type": "train", "step": 3, "tokens_total": 30, "loss": 1.5},
        {"type": "eval", "step": 3, "train_loss": 1.9, "val_loss": 2.4, "full": False},
        {"type": "eval", "step": 3, "train_loss": None, "val_loss": 2.3, "full": True},
    ])
    metrics.write_bytes(metrics.read_bytes() + b'{"v":1,"type":"tra')  # a line cut by a kill
    train, evals = loss_history(metrics)
    assert train == [(1, 10, 4.0), (2, 20, 3.0), (3, 30, 1.5)]
    assert evals == [(1, 4.0, 4.5), (3, 1.9, 2.4)]


def test_resume_without_out_picks_the_newest_unfinished_run(tmp_path):
    runs = tmp_path / "runs"
    for name, status in [("a-done", "completed"), ("b-killed", None), ("c-interrupted", "interrupted"),
                         ("d-done", "completed")]:
        (runs / name).mkdir(parents=True)
        (runs / name / "config.json").write_text("{}")
        events = [{"type": "run_start", "resumed_from_step": 0}]
        if status:
            events.append({"type": "run_end", "status": status})
        write_events(runs / name / "metrics.jsonl", events)
        time.sleep(0.01)
    os.utime(runs / "b-killed" / "config.json", (time.time() + 5, time.time() + 5))  # newest
    assert run_status(runs / "c-interrupted") == "interrupted" and run_status(runs / "b-killed") is None
    assert newest_unfinished(runs) == runs / "b-killed"
    (runs / "b-killed" / "config.json").unlink()
    assert newest_unfinished(runs) == runs / "c-interrupted"
    with pytest.raises(ValueError, match="no unfinished run under"):
        newest_unfinished(tmp_path / "empty")
