"""RunState: status, resumes, downsampled series, stragglers, malformed fields, judge results."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from testkit.runs import RunWriter, judge_summary
from tui.follow import RunFollower, Skipped
from tui.quality import FINAL_SUMMARY, Estimate, FinalJudge
from tui.series import Series
from tui.state import RunState, Thresholds


def read(run_dir: Path, now: float, state: RunState | None = None, follower=None) -> RunState:
    state = state or RunState()
    follower = follower or RunFollower(run_dir, clock=lambda: now)
    state.apply_poll(follower.poll(), now)
    return state


def test_status_follows_the_run(writer):
    state = RunState(Thresholds(stall_after_s=120))
    follower = RunFollower(writer.run_dir, clock=lambda: 1000.0)
    read(writer.run_dir, 1000.0, state, follower)
    assert state.status(1000.0) == "waiting"
    writer.start()
    writer.steps(1, 3)
    writer.touch(1000.0)
    read(writer.run_dir, 1000.0, state, follower)
    assert state.status(1000.0 + 120) == "running"
    assert state.status(1000.0 + 121) == "stalled"
    writer.end("interrupted", 3)
    read(writer.run_dir, 1000.0, state, follower)
    assert state.status(5000.0) == "interrupted"
    writer.start(resumed_from_step=3)  # a resume clears the end
    read(writer.run_dir, 1000.0, state, follower)
    assert state.status(1000.0) == "running"
    writer.end("failed", 3, error="CUDA error: out of memory")
    read(writer.run_dir, 1000.0, state, follower)
    assert state.status(1000.0) == "failed"
    assert state.active_alert(1000.0) == "run failed: CUDA error: out of memory"


def test_resume_drops_the_earlier_attempts_steps(writer):
    writer.start()
    writer.steps(1, 30, eval_every=10)
    writer.checkpoint(20)
    writer.checkpoint(30)
    writer.alert(25, "nonfinite_loss", "loss is nan")
    writer.end("interrupted", 30)
    state = read(writer.run_dir, 0.0)
    assert state.step() == 30 and state.status(0.0) == "interrupted"
    writer.start(resumed_from_step=20)
    state = read(writer.run_dir, 0.0, state=RunState())  # same result from a fresh reader
    steps = [b.step for b in state.series["loss"].points()]
    assert steps == list(range(1, 21))  # no zig-zag: 21..30 of attempt 1 are gone
    assert [b.step for b in state.series["val_loss"].points()] == [10, 20]
    assert [s for s, _ in state.samples] == [10, 20]
    assert [(line.kind, line.step) for line in state.log] == [
        ("run_start", None), ("checkpoint", 20), ("run_start", None)]
    assert state.log[-1].text == "attempt 2 resumed from step 20"
    assert state.step() == 20 and state.status(0.0) == "running"
    writer.steps(21, 25)
    state = read(writer.run_dir, 0.0, state=RunState())
    losses = state.series["loss"].points()
    assert [b.step for b in losses] == list(range(1, 26))
    assert state.step() == 25


def test_series_memory_is_bounded_and_means_are_kept():
    series = Series(capacity=64)
    n = 100_000
    for step in range(1, n + 1):
        series.add(step, float(step % 10))
    points = series.points()
    assert 32 <= len(points) <= 64
    assert sum(b.count for b in points) == n
    assert series.stride == 2048
    assert points[0].step == pytest.approx((1 + 2048) / 2)
    assert all(b.value == pytest.approx(4.5, abs=0.01) for b in points[:-1])
    assert min(b.low for b in points) == 0.0
    assert series.last == 0.0


def test_series_drop_after_is_exact_at_full_resolution():
    series = Series(capacity=64)
    for step in range(1, 41):
        series.add(step, step * 1.0)
    series.drop_after(25)
    assert [b.step for b in series.points()] == list(range(1, 26))
    assert series.last == 25.0


def test_best_val_loss(writer):
    writer.start()
    for step, val in ((10, 2.0), (20, 1.5), (30, 1.7)):
        writer.train(step)
        writer.eval(step, val_loss=val)
    state = read(writer.run_dir, 0.0)
    assert state.best_val() == (1.5, 20)
    assert state.series["val_loss"].last == 1.7


def rows(writer: RunWriter, now: float, **thresholds) -> dict[int, str | None]:
    state = read(writer.run_dir, now, state=RunState(Thresholds(**thresholds)))
    return {row.rank: row.straggler for row in state.rank_rows(now)}


def test_no_straggler_in_a_healthy_run(writer):
    writer.start()
    writer.steps(1, 5)
    writer.heartbeat(0, 5, "backward")
    writer.heartbeat(1, 4, "forward")
    assert rows(writer, 1000.0) == {0: None, 1: None}


def test_silent_rank_is_a_straggler(writer):
    writer.start()
    writer.steps(1, 5)
    writer.heartbeat(0, 5, "backward")
    writer.heartbeat(1, 5, "backward")
    writer.touch(1000.0)
    follower = RunFollower(writer.run_dir, clock=lambda: 1000.0)
    state = RunState(Thresholds(stall_after_s=60))
    state.apply_poll(follower.poll(), 1000.0)
    follower.ranks[0].clock = lambda: 1050.0
    writer.heartbeat(0, 5, "backward")  # rank 0 heard at 1050, rank 1 last at 1000
    state.apply_poll(follower.poll(), 1050.0)
    by_rank = {row.rank: row for row in state.rank_rows(1061.0)}
    assert by_rank[0].straggler is None and by_rank[0].since_heard_s == 11.0
    assert by_rank[1].straggler == "silent 1:01" and by_rank[1].since_heard_s == 61.0
    state.check_stragglers(1061.0)
    assert state.log[-1].text == "rank 1 straggler: silent 1:01"
    assert state.active_alert(1061.0) == "rank 1 straggler: silent 1:01"
    state.check_stragglers(1062.0)  # logged once, not on every redraw
    assert sum(line.kind == "straggler" for line in state.log) == 1


def test_rank_stuck_outside_a_collective_is_a_straggler(writer):
    writer.start()
    writer.steps(1, 5)
    writer.heartbeat(0, 5, "backward", phase_for=200.0)  # waiting in the all-reduce
    writer.heartbeat(1, 5, "forward", phase_for=130.0)  # hung in its forward
    assert rows(writer, 1000.0) == {0: None, 1: "stuck in forward 2:10"}


def test_phase_duration_adds_our_time_since_heard(writer):
    writer.start()
    writer.heartbeat(0, 0, "forward", phase_for=100.0)
    writer.heartbeat(1, 0, "backward", phase_for=100.0)
    writer.touch(1000.0)
    assert rows(writer, 1000.0) == {0: None, 1: None}
    state = read(writer.run_dir, 1000.0)
    row = state.rank_rows(1030.0)[0]
    assert row.phase_for_s == pytest.approx(130.0) and row.straggler == "stuck in forward 2:10"


def test_rank_far_behind_is_a_straggler(writer):
    writer.start()
    writer.heartbeat(0, 50, "step")
    writer.heartbeat(1, 25, "data")
    assert rows(writer, 1000.0, behind_steps=20) == {0: None, 1: "25 steps behind"}


def test_no_stragglers_once_the_run_ended(writer):
    writer.start()
    writer.heartbeat(0, 50, "idle")
    writer.heartbeat(1, 5, "idle")
    writer.end("completed", 50)
    state = read(writer.run_dir, 1000.0)
    assert [row.straggler for row in state.rank_rows(99999.0)] == [None, None]


def test_malformed_fields_do_not_crash(writer):
    with open(writer.metrics, "wb") as f:
        for event in (
            {"v": 1, "type": "run_start", "time": "x", "world_size": "two", "hosts": 3, "total_steps": None},
            {"v": 1, "type": "train", "time": 1.0, "step": "1", "loss": 2.0},
            {"v": 1, "type": "train", "time": 1.0, "step": 2, "loss": "nan", "lr": True},
            {"v": 1, "type": "eval", "time": 1.0, "step": 2, "val_loss": None},
            {"v": 1, "type": "alert", "time": 1.0, "kind": 5},
            {"v": 1, "type": "future_event", "time": 1.0},
        ):
            f.write(orjson.dumps(event) + b"\n")
    state = read(writer.run_dir, 0.0)
    assert state.step() == 2 and state.total_steps() is None
    assert state.series["loss"].points() == [] and state.series["lr"].points() == []
    assert state.log[-1].text == "alert: "
    assert state.events_read == 6 and state.skipped() == Skipped()


def test_solo_work_and_waiting_for_it_are_never_stuck(writer):
    writer.world_size = 3
    writer.start()
    writer.heartbeat(0, 10, "convert", phase_for=400.0)  # rank 0 converts the checkpoint
    writer.heartbeat(1, 10, "wait_convert", phase_for=400.0)
    writer.heartbeat(2, 10, "step", phase_for=400.0)
    assert rows(writer, 1000.0) == {0: None, 1: None, 2: None}
    writer.heartbeat(1, 10, "forward", phase_for=400.0)  # a real hang is still found
    assert rows(writer, 1000.0) == {0: None, 1: "stuck in forward 6:40", 2: None}


def test_only_the_latest_attempts_ranks_count(writer):
    writer.world_size = 4
    writer.start()
    writer.steps(1, 10)
    for rank in range(4):
        writer.heartbeat(rank, 10, "backward")
    with open(writer.rank_file(3), "ab") as f:
        f.write(b"{corrupt\n")
    writer.world_size = 2  # resumed on two ranks
    writer.start(resumed_from_step=10)
    writer.heartbeat(0, 10, "forward")
    writer.heartbeat(1, 2, "forward")  # far behind: still a straggler
    state = read(writer.run_dir, 1000.0, state=RunState(Thresholds(behind_steps=5)))
    assert sorted(state.heartbeats) == [0, 1, 2, 3]  # read, but not listed
    assert {row.rank: row.straggler for row in state.rank_rows(1000.0)} == {0: None, 1: "8 steps behind"}
    assert state.skipped() == Skipped()  # rank 3's corrupt line is an earlier attempt's


def scores(state: RunState) -> list[tuple[int, float, tuple[float, float] | None]]:
    return [(step, score.mean, score.ci95) for step, score in state.eval_scores()]


def test_judged_evaluations_over_steps(writer):
    writer.start()
    for step in (10, 20, 30):
        writer.steps(step - 9, step)
        writer.eval_responses(step)
    writer.judged_eval(20, 45.0, (40.0, 50.0))
    writer.judged_eval(10, 40.0, (35.0, 45.0))
    (writer.run_dir / "evals" / "step-x.scored.summary.json").write_bytes(orjson.dumps(judge_summary()))
    state = read(writer.run_dir, 0.0)
    assert scores(state) == [(10, 40.0, (35.0, 45.0)), (20, 45.0, (40.0, 50.0))]
    assert state.judge_pending() == 1  # step 30's responses wait for the judge
    assert state.final_judge() is None and state.judge_start is None
    writer.end("interrupted", 30)
    writer.start(resumed_from_step=20)  # step 30 is replayed: its responses will come again
    state = read(writer.run_dir, 0.0)
    assert state.eval_responses == [10, 20] and state.judge_pending() == 0


def test_final_verdict_from_judge_end_or_the_summary(writer):
    writer.start()
    writer.steps(1, 5)
    writer.end("completed", 5)
    writer.judge_start()
    state = read(writer.run_dir, 0.0)
    assert state.judge_start["model"] == "llama3" and state.final_judge() is None
    writer.judge_end(summary=False)  # only the event says how it went
    final = read(writer.run_dir, 0.0).final_judge()
    assert final == FinalJudge(tuned=Estimate(51.75, (47.2, 56.3)), base=Estimate(38.1, None),
                               difference=Estimate(13.6, (9.8, 17.5), 110), judge="", error="", command="")
    assert (final.tuned.text(), final.tuned.short()) == ("51.75 [47.2, 56.3]", "51.8±4.5")
    assert (final.difference.text(signed=True), final.difference.short(signed=True)) == ("+13.60 [9.8, 17.5]",
                                                                                        "+13.6±3.8")


def test_a_failed_judge_and_a_summary_written_later_by_hand(writer):
    writer.start()
    writer.end("completed", 0)
    writer.judge_start()
    writer.judge_failed("connection error: gpu-box:11434", "python -m judge score runs/x/y.json")
    state = read(writer.run_dir, 0.0)
    final = state.final_judge()
    assert (final.tuned, final.error, final.command) == (
        None, "connection error: gpu-box:11434", "python -m judge score runs/x/y.json")
    assert state.log[-1].text == "judge failed: connection error: gpu-box:11434"
    summary = judge_summary(60.0, (55.0, 65.0), base=(50.0, (45.0, 55.0)), difference=(10.0, (7.0, 13.0)))
    (writer.run_dir / FINAL_SUMMARY).write_bytes(orjson.dumps(summary))  # the command, run later
    final = read(writer.run_dir, 0.0).final_judge()
    assert final == FinalJudge(tuned=Estimate(60.0, (55.0, 65.0)), base=Estimate(50.0, (45.0, 55.0)),
                               difference=Estimate(10.0, (7.0, 13.0), 110), judge="llama3", error="", command="")
