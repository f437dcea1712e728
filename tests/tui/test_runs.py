"""The runs list's data: what it reads of each run (head, tail, the final judge summary), its
order, and the config differences of a comparison."""

from __future__ import annotations

import orjson

import tui.runs
from tests.tui.conftest import judged_run
from testkit.runs import RunWriter
from tui.compare import config_table
from tui.once import render_text
from tui.runs import COLUMNS, config_differences, read_config, sort_runs, summarize_run
from tui.state import Thresholds


def test_a_long_runs_results_come_from_its_head_tail_and_summary(tmp_path, monkeypatch):
    monkeypatch.setattr(tui.runs, "TAIL_BYTES", 4096)  # the run's file is 20 times as long
    run = judged_run(tmp_path / "run-a", steps=300, quality=2.0)
    assert run.metrics.stat().st_size > 20 * 4096
    events = [orjson.loads(line) for line in run.metrics.read_bytes().splitlines()]
    start, end = events[0], next(e for e in events if e["type"] == "run_end")
    summary = summarize_run(run.run_dir, now=run.time, thresholds=Thresholds())
    assert (summary.status, summary.model, summary.step) == ("completed", "gpt2-medium", 300)
    assert summary.final_val_loss == 0.632
    assert summary.duration_s == end["time"] - start["time"]
    assert summary.cells() == ("run-a", "gpt2-medium", "completed", "300/300", "0.632", "52.0±5.0",
                               "+12.0±4.0", "2:42")


def test_unknown_values_sort_last_either_way(tmp_path):
    summaries = []
    for name, quality in (("a", 1.0), ("b", None), ("c", 3.0)):
        run = judged_run(tmp_path / name, steps=20, quality=quality or 0.0, judge=quality is not None)
        summaries.append(summarize_run(run.run_dir, now=run.time, thresholds=Thresholds()))
    judge = [column.title for column in COLUMNS].index("judge")
    assert [s.name for s in sort_runs(summaries, judge)] == ["a", "c", "b"]
    assert [s.name for s in sort_runs(summaries, judge, reverse=True)] == ["c", "a", "b"]


def test_config_differences(tmp_path):
    a, b, c = (RunWriter(tmp_path / name) for name in "abc")
    a.config(lr=5e-5, seed=1)
    b.config(lr=1e-4, seed=1, compile=True)
    (c.run_dir / "config.json").write_bytes(b"{not json")
    configs = [read_config(run.run_dir) for run in (a, b, c)]
    assert configs[2].startswith("config.json unreadable: ")
    assert read_config(tmp_path / "none") == "no config.json"
    assert config_differences(configs) == [("compile", ["-", "true", "-"]), ("lr", ["5e-05", "0.0001", "-"])]
    assert config_differences(configs[:1] + configs[2:]) == []  # one readable config: nothing to compare


def test_a_comparison_names_the_runs_whose_config_cannot_be_read():
    text = render_text([config_table(["a", "b", "c"], [{"lr": 1e-4, "seed": 1}, {"lr": 5e-5, "seed": 1},
                                                        "no config.json"])])
    assert [line.split() for line in text.splitlines()] == [
        ["3", "c:", "no", "config.json"], ["config", "key", "1", "2", "3"], ["lr", "0.0001", "5e-05", "-"]]
    assert render_text([config_table(["a", "b"], [{"lr": 1e-4}, {"lr": 1e-4}])]) == (
        "no config key differs between the runs\n")
