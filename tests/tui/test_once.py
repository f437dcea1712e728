"""`python -m tui --once` (the real CLI in a subprocess) and the text it prints."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import orjson

from testkit.paths import REPO
from tests.tui.conftest import (MARKUP_ALERT, MARKUP_ERROR, MARKUP_HOST, MARKUP_JUDGE, MARKUP_MODEL,
                                MARKUP_RESPONSE, MARKUP_RUN_NAME, judged_run, markup_run, mid_run,
                                runs_to_compare)
from testkit.runs import RunWriter, judge_summary
from tui.once import read_run, run_summary
from tui.state import Thresholds


def once(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tui", "--once", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_once_prints_the_run(writer):
    mid_run(writer)
    (writer.run_dir / "scores.summary.json").write_bytes(orjson.dumps(judge_summary()))
    result = once(writer.run_dir)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:6] == [
        "run       20261125-140000-gpt2-medium  gpt2-medium  2 ranks on node0,node1",
        "status    running",
        "step      120/232 (52%)  epoch 2/2  elapsed 1:05  ETA 56 s",
        "loss      train 0.700  val 0.800  best val 0.800 @120",
        "speed     tokens/s 840  samples/s 16  MFU 40.0%  lr 5.00e-05  grad norm 3.1",
        "alert     nonfinite_loss: loss is nan on rank 1; global batch skipped",
    ]
    assert any(line.split()[:3] == ["1", "node1", "forward"] for line in lines)
    assert "    +55 s   s100 checkpoint checkpoints/global_step100 (1.8 s)" in lines
    assert "model_response  mean 51.75  95% CI [47.2, 56.3]" in lines


def test_once_says_stalled_and_names_silent_ranks(writer):
    mid_run(writer)
    writer.touch(time.time() - 600)
    result = once(writer.run_dir, "--stall-after", 300)
    assert "status    stalled" in result.stdout.splitlines()
    rows = [line for line in result.stdout.splitlines() if "node" in line and "silent" in line]
    assert len(rows) == 2 and rows[0].endswith("silent 10:00")


def test_once_says_stalled_for_a_run_dead_before_its_metrics_file(tmp_path):
    writer = RunWriter(tmp_path / "20261125-150000-tiny")
    writer.config()
    writer.heartbeat(0, 0, "tokenize")  # killed while planning: no metrics.jsonl, no run_start
    three_hours_ago = time.time() - 3 * 3600
    for path in (writer.run_dir / "config.json", writer.rank_file(0)):
        os.utime(path, (three_hours_ago, three_hours_ago))
    result = once(writer.run_dir)
    assert result.returncode == 0, result.stderr
    assert "status    stalled" in result.stdout.splitlines()
    # Dated by the newest of its files: a heartbeat a minute old keeps it waiting.
    os.utime(writer.rank_file(0), (time.time() - 60, time.time() - 60))
    text = run_summary(read_run(writer.run_dir, Thresholds(), time.time()), writer.run_dir.name, time.time())
    assert text.splitlines()[1] == "status    waiting"


def test_once_says_waiting_for_an_empty_run_directory_however_old(tmp_path):
    empty = tmp_path / "20261125-150000-tiny"
    empty.mkdir()
    os.utime(empty, (time.time() - 3 * 3600, time.time() - 3 * 3600))
    result = once(empty)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1] == "status    waiting"


def test_once_uses_the_same_status_words_as_the_app(writer):
    writer.start()
    writer.steps(1, 10)
    writer.end("failed", 10, error="RuntimeError: NCCL timeout")
    state = read_run(writer.run_dir, Thresholds(), now=time.time())
    text = run_summary(state, writer.run_dir.name, time.time())
    assert text.splitlines()[1] == "status    failed"
    assert "error     RuntimeError: NCCL timeout" in text.splitlines()


def test_once_prints_markup_like_text_from_the_run_as_is(tmp_path):
    writer = markup_run(tmp_path / MARKUP_RUN_NAME)
    result = once(writer.run_dir)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"run       {MARKUP_RUN_NAME}  {MARKUP_MODEL}  2 ranks on {MARKUP_HOST},node1"
    assert lines[1] == "status    failed"
    assert f"error     {MARKUP_ERROR}" in lines
    assert f"alert     run failed: {MARKUP_ERROR}" in lines
    assert any(line.split()[:3] == ["0", MARKUP_HOST, "backward"] for line in lines)
    assert any(line.endswith(f"s20 nonfinite_loss: {MARKUP_ALERT}") for line in lines)
    assert any(line.endswith(f"s20 run failed: {MARKUP_ERROR}") for line in lines)
    assert f"step 20 {MARKUP_RESPONSE}" in lines
    assert f"judge {MARKUP_JUDGE} (ollama)" in lines


def test_once_survives_a_real_gloo_error(writer):
    """The error of a real 2-rank gloo run that lost a rank (it made Rich raise MarkupError)."""
    error = ("lost rank 1: RuntimeError: [/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/"
             "pair.cc:537] Read error [127.0.0.1]:32431: Connection reset by peer. GLHF! 🏖️")
    writer.start()
    writer.steps(1, 3)
    writer.end("failed", 3, error=error)
    text = run_summary(read_run(writer.run_dir, Thresholds(), now=time.time()), writer.run_dir.name, time.time())
    assert text.splitlines()[1] == "status    failed"
    words = " ".join(text.split())  # the long line is wrapped at 100 columns
    assert f"error {error} alert run failed: {error} ranks" in words


def test_once_lists_runs_with_markup_like_names(tmp_path):
    markup_run(tmp_path / "runs" / MARKUP_RUN_NAME)
    result = once(tmp_path / "runs")
    assert result.returncode == 0, result.stderr
    row = result.stdout.splitlines()[1]
    assert re.split(" {2,}", row)[:4] == [MARKUP_RUN_NAME, MARKUP_MODEL, "failed", "20/232"]


def test_once_lists_runs(tmp_path):
    for name, status in (("20261124-090000-tiny", "completed"), ("20261125-090000-tiny", "interrupted")):
        writer = RunWriter(tmp_path / "runs" / name, model="tiny", total_steps=10)
        writer.start()
        writer.steps(1, 4)
        writer.end(status, 4)
    result = once(tmp_path / "runs")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["run", "model", "status", "steps", "val", "judge", "tuned−base", "duration"]
    assert sorted(line.split() for line in lines[1:]) == [
        ["20261124-090000-tiny", "tiny", "completed", "4/10", "0.652", "-", "-", "3", "s"],
        ["20261125-090000-tiny", "tiny", "interrupted", "4/10", "-", "-", "-", "3", "s"],
    ]


def test_bad_paths_give_one_line_and_a_nonzero_exit(tmp_path):
    result = once(tmp_path / "missing")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"python -m tui: {tmp_path / 'missing'}: no such run directory\n"
    (tmp_path / "file").write_text("x")
    result = once(tmp_path / "file")
    assert result.returncode == 2 and result.stderr.splitlines()[-1].endswith(f"{tmp_path / 'file'}: not a directory")


def test_imports_nothing_from_the_trainer_torch_or_deepspeed():
    code = ("import sys, tui.__main__, tui.app, tui.once; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'deepspeed', 'trainer', 'judge'}))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[]\n"


def test_once_lists_only_the_current_attempts_ranks(writer):
    writer.start()
    writer.steps(1, 20)
    writer.heartbeat(0, 20, "backward")
    writer.heartbeat(1, 20, "backward")
    writer.end("interrupted", 20)
    writer.world_size = 1  # resumed on one rank
    writer.start(resumed_from_step=20)
    writer.steps(21, 22)
    writer.heartbeat(0, 22, "export", phase_for=1.0)
    writer.touch(time.time())
    os.utime(writer.rank_file(1), (time.time() - 3600, time.time() - 3600))
    result = once(writer.run_dir)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    ranks = lines[lines.index("ranks") + 1 : lines.index("ranks") + 3]
    assert ranks[0].split()[:3] == ["rank", "host", "phase"]
    assert ranks[1].split()[:3] == ["0", "node0", "export"]
    assert "node1" not in result.stdout


def test_once_prints_quality(tmp_path):
    run = judged_run(tmp_path / "20261125-140000-gpt2-medium")
    result = once(run.run_dir)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    start = lines.index("judge     judged evals 3  step 60: 60.00 [55.0, 65.0]")
    assert lines[start + 1] == "          final 50.00 [45.0, 55.0]  base 40.00  tuned − base +10.00 [6.0, 14.0]"
    section = lines.index("judged evaluations (last 8)")
    assert lines[section + 1 : section + 4] == ["  step     20  40.00 [35.0, 45.0]",
                                                "  step     40  50.00 [45.0, 55.0]",
                                                "  step     60  60.00 [55.0, 65.0]"]
    assert "instruction-data-with-response.scored.summary.json" in lines  # its details follow


def test_once_lists_runs_with_quality(tmp_path):
    runs_to_compare(tmp_path / "runs")
    result = once(tmp_path / "runs")
    assert result.returncode == 0, result.stderr
    assert [line.split() for line in result.stdout.splitlines()] == [
        ["run", "model", "status", "steps", "val", "judge", "tuned−base", "duration"],
        ["run-c", "tiny", "stalled", "15/40", "-", "-", "-", "9", "s"],  # dated long ago
        ["run-b", "gpt2-medium", "completed", "60/60", "0.612", "54.0±5.0", "+14.0±4.0", "33", "s"],
        ["run-a", "gpt2-medium", "completed", "60/60", "0.652", "50.0±5.0", "+10.0±4.0", "33", "s"],
    ]


def test_once_lists_a_run_killed_while_planning_as_stalled(tmp_path):
    """A run directory without metrics.jsonl (killed while planning) is in the runs list too,
    dated by the newest of its files as the dashboard dates it."""
    runs = tmp_path / "runs"
    for name, age in (("20261125-090000-tiny", 3 * 3600), ("20261125-100000-tiny", 10)):
        writer = RunWriter(runs / name)
        writer.config()
        writer.heartbeat(0, 0, "tokenize")
        for path in (writer.run_dir / "config.json", writer.rank_file(0)):
            os.utime(path, (time.time() - age, time.time() - age))
    result = once(runs)
    assert result.returncode == 0, result.stderr
    rows = [line.split()[:4] for line in result.stdout.splitlines()[1:]]
    assert rows == [["20261125-100000-tiny", "?", "waiting", "0/?"], ["20261125-090000-tiny", "?", "stalled", "0/?"]]
