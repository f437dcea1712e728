"""The dashboard under Textual's `run_test()` with a Pilot: real files, the real worker thread,
the clock injected."""

from __future__ import annotations

import os

import orjson
import pytest
from rich.color import Color

from tests.tui.conftest import (MARKUP_ALERT, MARKUP_ERROR, MARKUP_HOST, MARKUP_JUDGE, MARKUP_MODEL,
                               MARKUP_RESPONSE, MARKUP_RUN_NAME, Clock, following_mid_run, make_app,
                               markup_run, mid_run, runs_to_compare, screen_text, settle, wait_for,
                               wait_for_text)
from testkit.runs import RunWriter, judge_summary
from tui.dashboard import DashboardScreen
from tui.runs import COLUMNS
from tui.runs_screen import RunsScreen
from tui.widgets import LossChart, RunHeader

pytestmark = pytest.mark.anyio


STRAGGLER_RED = Color.parse("dark_red").get_truecolor().hex


def background(app, host: str) -> str:
    """The background colour (#rrggbb) of the host's cell in the ranks table."""
    for strip in app.screen._compositor.render_strips():
        if not strip.text.startswith("│"):  # a row inside a panel, not the header
            continue
        for segment in strip:
            if host in segment.text:
                return segment.style.bgcolor.get_truecolor().hex
    raise AssertionError(f"{host!r} not on screen")


def widget_text(widget) -> str:
    """What the widget shows on the screen, as plain text."""
    region = widget.region
    lines = screen_text(widget.app).splitlines()[region.y : region.bottom]
    return "\n".join(line[region.x : region.right] for line in lines)


async def test_shows_header_loss_throughput_ranks_and_alert(writer):
    async with following_mid_run(writer) as (app, pilot):
        text = screen_text(app)
        lines = text.splitlines()
        assert lines[0].startswith(" 20261125-140000-gpt2-medium  gpt2-medium  2 ranks on node0,node1")
        assert "RUNNING" in lines[0]
        assert "52% epoch 2/2" in lines[1] and "ETA 56 s" in lines[1]
        assert "⚠ nonfinite_loss: loss is nan on rank 1; global batch skipped" in lines[2]
        assert "━ train 0.700  ━ val 0.800" in text  # loss_at(120) = 0.6996
        assert "best val 0.800 @120" in text
        assert "tokens/s      840" in text and "MFU         40.0%" in text
        assert "grad norm     3.1" in text and "lr       5.00e-05" in text
        node0 = next(line for line in lines if "node0 " in line)
        assert node0.split()[1:10] == ["0", "node0", "backward", "0", "s", "120", "0", "0", "s"]
        assert background(app, "node1") != STRAGGLER_RED


async def test_follows_events_appended_while_it_runs(writer):
    async with following_mid_run(writer) as (app, pilot):
        writer.steps(121, 140, eval_every=20)
        writer.train(141, loss=0.5)
        await wait_for_text(pilot, "step 141/232")
        assert "━ train 0.500" in screen_text(app)
        writer.end("completed", 141)
        await wait_for_text(pilot, "COMPLETED")
        assert "best val 0.760 @140  final val 0.652" in screen_text(app)


async def test_straggler_is_highlighted_and_alerted(writer):
    clock = Clock(1000.0)
    async with following_mid_run(writer, clock, stall_after_s=60) as (app, pilot):
        clock.now = 1050.0
        writer.heartbeat(0, 120, "backward")  # rank 0 is heard again, rank 1 is not
        await settle(pilot)
        clock.now = 1061.0
        await settle(pilot)
        text = screen_text(app)
        assert "⚠ rank 1 straggler: silent 1:01" in text
        assert "STALLED" in text  # metrics.jsonl has not grown for 61 s either
        assert background(app, "node1") == STRAGGLER_RED
        assert background(app, "node0") != STRAGGLER_RED
        await pilot.press("tab", "tab")  # the events panel
        await wait_for_text(pilot, "rank 1 straggler: silent 1:01")


async def test_pause_stops_following_until_resumed(writer):
    async with following_mid_run(writer) as (app, pilot):
        await pilot.press("p")
        assert "PAUSED" in screen_text(app)
        screen = app.screen
        polls = screen.polls
        writer.steps(121, 125)
        await pilot.pause(0.5)  # ten poll intervals
        assert screen.polls == polls and "step 120/232" in screen_text(app)
        await pilot.press("p")
        await wait_for_text(pilot, "step 125/232")
        assert "PAUSED" not in screen_text(app)


async def test_keys_smooth_log_tab_help_quit(writer):
    (writer.run_dir / "instruction-data-with-response.summary.json").write_bytes(orjson.dumps(judge_summary()))
    async with following_mid_run(writer) as (app, pilot):
        chart = app.screen.query_one(LossChart)
        await pilot.press("s")
        assert chart.smooth and "Loss (ema)" in screen_text(app)
        assert "(ema 0.7" in screen_text(app)
        await pilot.press("l")
        assert chart.log_y and "Loss (ema, log)" in screen_text(app)
        await pilot.press("s", "l")
        assert "─ Loss ─" in screen_text(app)
        titles = []
        for _ in range(4):
            titles.append(next(line for line in screen_text(app).splitlines()[13:] if "╭─" in line))
            await pilot.press("tab")
        assert [t.split()[1] for t in titles] == ["Ranks", "Samples", "Events", "Judge"]
        assert "╭─ Ranks" in screen_text(app)  # and round again
        await pilot.press("tab", "tab", "tab")
        text = screen_text(app)
        assert "model_response  mean 51.75  95% CI [47.2, 56.3]" in text
        assert "scored 108/110  failed 1  unparseable 1" in text
        await pilot.press("question_mark")
        await wait_for_text(pilot, "this help (any key closes it)")
        await pilot.press("x")
        await wait_for(pilot, lambda: "this help" not in screen_text(app))
        assert isinstance(app.screen, DashboardScreen)
        await pilot.press("q")
        await wait_for(pilot, lambda: not app.is_running)


async def test_samples_and_events_panels(writer):
    async with following_mid_run(writer) as (app, pilot):
        await pilot.press("tab")
        text = screen_text(app)
        assert "prompt Convert the active sentence to passive" in text
        samples = [line for line in text.splitlines() if "The meal is cooked" in line]
        assert samples[0].split()[1:3] == ["step", "120"] and samples[1].split()[1:3] == ["step", "100"]
        await pilot.press("tab")
        text = screen_text(app)
        assert "checkpoint checkpoints/global_step100 (1.8 s)" in text
        assert "s57 nonfinite_loss: loss is nan on rank 1" in text


async def test_waits_for_a_run_directory_that_does_not_exist_yet(tmp_path):
    run_dir = tmp_path / "20261125-150000-tiny"
    app = make_app(run_dir, Clock(0.0))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert "WAITING" in screen_text(app) and "0 events" in screen_text(app)
        assert "waiting for the first step" in screen_text(app)
        assert "no heartbeats yet" in screen_text(app)
        writer = RunWriter(run_dir)
        writer.start()
        writer.steps(1, 3)
        await wait_for_text(pilot, "step 3/232")
        assert "RUNNING" in screen_text(app)


async def test_partial_and_corrupt_lines(writer):
    async with following_mid_run(writer) as (app, pilot):
        assert "corrupt" not in screen_text(app)
        writer.time += 0.5
        line = orjson.dumps({"v": 1, "type": "train", "time": writer.time, "step": 121, "loss": 0.4}) + b"\n"
        with open(writer.metrics, "ab") as f:
            f.write(b"{this is not json\n" + line[:20])
            f.flush()
        await wait_for_text(pilot, "corrupt lines: 1")
        await settle(pilot)
        assert "step 120/232" in screen_text(app)  # the half line waits for its end
        with open(writer.metrics, "ab") as f:
            f.write(line[20:])
        await wait_for_text(pilot, "step 121/232")
        assert "━ train 0.400" in screen_text(app)


async def test_replaced_and_truncated_files_are_reloaded(writer, tmp_path):
    async with following_mid_run(writer) as (app, pilot):
        other = RunWriter(tmp_path / "other", total_steps=50)
        other.start()
        other.steps(1, 7)
        os.replace(other.metrics, writer.metrics)
        await wait_for_text(pilot, "step 7/50")
        assert "⚠" not in screen_text(app)  # the old run's alert went with its file
        with open(writer.metrics, "r+b") as f:
            f.truncate(0)
        await wait_for_text(pilot, "WAITING")
        other.start()
        other.steps(1, 2)
        with open(writer.metrics, "ab") as f:
            f.write(other.metrics.read_bytes())
        await wait_for_text(pilot, "step 2/50")


async def test_resumed_run_continues_without_zigzag(writer):
    writer.start()
    writer.steps(1, 30, eval_every=10)
    writer.checkpoint(20)
    writer.end("interrupted", 30)
    app = make_app(writer.run_dir, Clock(writer.time))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for_text(pilot, "INTERRUPTED")
        writer.start(resumed_from_step=20)
        await wait_for_text(pilot, "step 20/232")
        assert "RUNNING" in screen_text(app)
        steps = [b.step for b in app.screen.state.series["loss"].points()]
        assert steps == list(range(1, 21))
        writer.steps(21, 22)
        await wait_for_text(pilot, "step 22/232")
        await pilot.press("tab", "tab")
        assert "attempt 2 resumed from step 20" in screen_text(app)


async def test_large_terminal_shows_every_panel(writer):
    async with following_mid_run(writer, size=(140, 44)) as (app, pilot):
        text = screen_text(app)
        for title in ("Loss", "Throughput", "Ranks", "Samples", "Events", "Judge"):
            assert f"╭─ {title} " in text
        assert "straggler" in text  # the wide ranks table has a column saying why


async def test_runs_list_opens_a_run(tmp_path):
    old = RunWriter(tmp_path / "runs" / "20261124-090000-tiny", model="tiny", total_steps=10)
    old.start()
    old.steps(1, 10)
    old.end("completed", 10)
    os.utime(old.metrics, (old.time, old.time))
    new = RunWriter(tmp_path / "runs" / "20261125-140000-gpt2-medium")
    mid_run(new)
    os.utime(new.metrics, (new.time, new.time))
    app = make_app(tmp_path / "runs", Clock(new.time + 30))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for_text(pilot, "20261125-140000-gpt2-medium")  # the cursor's run, whole
        assert isinstance(app.screen, RunsScreen)
        lines = screen_text(app).splitlines()
        assert lines[1].split() == ["run", "model", "status", "steps", "val", "judge", "tuned−base", "duration"]
        assert lines[2].split() == ["2026112…-medium", "gpt2-medium", "running", "120/232", "-", "-", "-",
                                    "1:06"]
        assert lines[3].split() == ["2026112…00-tiny", "tiny", "completed", "10/10", "0.652", "-", "-",
                                    "6", "s"]
        await pilot.press("down", "enter")
        await wait_for_text(pilot, "step 10/10")
        assert "COMPLETED" in screen_text(app)
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen))


async def test_markup_like_text_from_the_run_is_shown_as_is(tmp_path):
    writer = markup_run(tmp_path / MARKUP_RUN_NAME)
    app = make_app(writer.run_dir, Clock(writer.time))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for_text(pilot, "FAILED")
        await settle(pilot)
        screen = app.screen
        header = widget_text(screen.query_one(RunHeader)).splitlines()
        assert header[0].startswith(f" {MARKUP_RUN_NAME}  {MARKUP_MODEL}  2 ranks on {MARKUP_HOST},node1")
        assert header[2].startswith(f" ⚠ run failed: {MARKUP_ERROR}")
        ranks = widget_text(screen.query_one("#ranks-panel"))
        assert any(line.split()[1:4] == ["0", MARKUP_HOST, "backward"] for line in ranks.splitlines())
        await pilot.press("tab")
        assert f"step 20 {MARKUP_RESPONSE}" in widget_text(screen.query_one("#samples-panel"))
        await pilot.press("tab")
        events = widget_text(screen.query_one("#events-panel"))
        assert f"s20 nonfinite_loss: {MARKUP_ALERT}" in events
        assert f"s20 run failed: {MARKUP_ERROR}" in events
        await pilot.press("tab")
        assert f"judge {MARKUP_JUDGE} (ollama)" in widget_text(screen.query_one("#judge-panel"))
        assert app.is_running


async def test_runs_list_shows_markup_like_names_as_is(tmp_path):
    root = tmp_path / "runs [red]"
    writer = markup_run(root / MARKUP_RUN_NAME)
    app = make_app(root, Clock(writer.time))
    async with app.run_test(size=(160, 24)) as pilot:
        await wait_for_text(pilot, MARKUP_RUN_NAME)
        assert widget_text(app.screen.query_one("#runs-title")).startswith(f" runs in {root}")
        row = next(line for line in widget_text(app.screen.query_one("#runs")).splitlines()
                   if MARKUP_RUN_NAME in line)
        assert row.split(MARKUP_RUN_NAME)[1].startswith(f" {MARKUP_MODEL} failed ")
        await pilot.press("enter")
        await wait_for_text(pilot, "FAILED")
        assert f"⚠ run failed: {MARKUP_ERROR}" in screen_text(app)


# --- issue 12: right from the first frame ------------------------------------------------------


def statuses_seen(app, seen: list[str]) -> str:
    """The header's status badge now, recorded in `seen` when it changes ("" before any)."""
    words = screen_text(app).splitlines()[0].split()
    status = words[-1] if words and words[-1].isupper() else ""
    if not seen or seen[-1] != status:
        seen.append(status)
    return status


async def test_a_run_dead_for_two_hours_is_stalled_from_the_first_frame(writer):
    mid_run(writer)
    writer.touch(writer.time)
    clock = Clock(writer.time + 7200)  # the dashboard looks two hours after the last write
    app = make_app(writer.run_dir, clock)
    async with app.run_test(size=(80, 24)) as pilot:
        seen = []
        await wait_for(pilot, lambda: statuses_seen(app, seen) and "step 120/232" in screen_text(app))
        assert seen[-1] == "STALLED" and "RUNNING" not in seen, seen
        ranks = widget_text(app.screen.query_one("#ranks-panel")).splitlines()
        for rank in (0, 1):  # heard two hours ago, by the files' dates
            row = next(line for line in ranks if f" node{rank} " in line).split()
            assert row[1:3] == [str(rank), f"node{rank}"] and row[7] == "2:00:00", row
        assert background(app, "node0") == background(app, "node1") == STRAGGLER_RED  # silent
        await settle(pilot)
        assert statuses_seen(app, seen) == "STALLED"


async def test_a_run_without_run_start_turns_stalled(tmp_path):
    writer = RunWriter(tmp_path / "20261125-150000-tiny")
    writer.heartbeat(0, 0, "tokenize")
    writer.metrics.write_bytes(b"")  # created, but its run_start never came
    writer.touch(5000.0)
    clock = Clock(5000.0)
    app = make_app(writer.run_dir, clock, stall_after_s=120)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for_text(pilot, "WAITING")
        clock.now = 5121.0
        await wait_for_text(pilot, "STALLED")
    writer.touch(5000.0 - 121)  # the same from a first look: dated by the file's mtime
    app = make_app(writer.run_dir, Clock(5000.0), stall_after_s=120)
    async with app.run_test(size=(80, 24)) as pilot:
        seen = []
        await wait_for(pilot, lambda: statuses_seen(app, seen) == "STALLED")
        assert "WAITING" not in seen, seen


async def test_a_run_dead_before_its_metrics_file_is_stalled_from_the_first_frame(tmp_path):
    writer = RunWriter(tmp_path / "20261125-150000-tiny")
    writer.config()
    writer.heartbeat(0, 0, "tokenize")  # killed while planning: no metrics.jsonl, no run_start
    three_hours_ago = 5000.0 - 3 * 3600
    for path in (writer.run_dir / "config.json", writer.rank_file(0)):
        os.utime(path, (three_hours_ago, three_hours_ago))
    clock = Clock(5000.0)
    app = make_app(writer.run_dir, clock, stall_after_s=120)
    async with app.run_test(size=(80, 24)) as pilot:
        seen = []
        await wait_for(pilot, lambda: statuses_seen(app, seen) == "STALLED")
        assert "WAITING" not in seen, seen
        writer.heartbeat(0, 0, "tokenize")  # before metrics.jsonl, a heartbeat is news
        await wait_for(pilot, lambda: statuses_seen(app, seen) == "WAITING")
        clock.now = 5121.0
        await wait_for(pilot, lambda: statuses_seen(app, seen) == "STALLED")
        assert list(filter(None, seen)) == ["STALLED", "WAITING", "STALLED"], seen


async def test_an_empty_run_directory_waits_stall_after_from_the_first_look(tmp_path):
    run_dir = tmp_path / "20261125-150000-tiny"
    run_dir.mkdir()
    os.utime(run_dir, (5000.0 - 3 * 3600, 5000.0 - 3 * 3600))  # a directory's own date is no news
    clock = Clock(5000.0)
    app = make_app(run_dir, clock, stall_after_s=120)
    async with app.run_test(size=(80, 24)) as pilot:
        seen = []
        await wait_for(pilot, lambda: statuses_seen(app, seen) == "WAITING")
        clock.now = 5119.0
        await settle(pilot)
        assert statuses_seen(app, seen) == "WAITING"
        clock.now = 5121.0
        await wait_for(pilot, lambda: statuses_seen(app, seen) == "STALLED")
        assert list(filter(None, seen)) == ["WAITING", "STALLED"], seen


async def test_lines_of_an_unknown_version_are_counted_apart_in_the_bottom_bar(writer):
    async with following_mid_run(writer) as (app, pilot):
        newer = [{"v": 2, "type": "train", "time": writer.time + 1, "step": 121, "loss": 0.1, "total": 999},
                 {"v": 2, "type": "run_end", "time": writer.time + 2, "status": "completed", "step": 121}]
        with open(writer.metrics, "ab") as f:
            f.write(b"".join(orjson.dumps(event) + b"\n" for event in newer))
        await wait_for_text(pilot, "unknown v lines: 2")
        await settle(pilot)
        text = screen_text(app)
        assert "step 120/232" in text and "RUNNING" in text and "━ train 0.700" in text
        assert "corrupt" not in text


async def test_ranks_of_an_earlier_attempt_with_more_ranks_are_not_listed(writer):
    writer.start()
    writer.steps(1, 20)
    writer.heartbeat(0, 20, "backward")
    writer.heartbeat(1, 20, "backward")
    writer.end("interrupted", 20)
    writer.world_size = 1  # resumed on one rank: rank-1.jsonl stays, silent
    writer.start(resumed_from_step=20)
    writer.steps(21, 25)
    writer.heartbeat(0, 25, "forward")
    writer.touch(writer.time)
    os.utime(writer.rank_file(1), (writer.time - 600, writer.time - 600))  # silent for 10 minutes
    app = make_app(writer.run_dir, Clock(writer.time))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for_text(pilot, "step 25/232")
        await settle(pilot)
        ranks = widget_text(app.screen.query_one("#ranks-panel"))
        assert "node0" in ranks and "node1" not in ranks
        assert "⚠" not in screen_text(app)  # no straggler alert for rank 1


async def test_waiting_phases_are_shown_as_waiting_and_never_stragglers(writer):
    # Ranks 0-1 on one node, 2-3 on another; each node's local rank 0 builds its token cache.
    writer.world_size = 4
    writer.start()
    writer.heartbeat(0, 0, "tokenize", phase_for=300.0)
    writer.heartbeat(1, 0, "wait_tokenize", phase_for=300.0)
    writer.heartbeat(2, 0, "backward", phase_for=200.0)  # the other node is done: in a collective
    writer.heartbeat(3, 0, "backward", phase_for=200.0)
    writer.touch(writer.time)
    app = make_app(writer.run_dir, Clock(writer.time), stall_after_s=120)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for_text(pilot, "waiting: tokenize")
        await settle(pilot)
        ranks = widget_text(app.screen.query_one("#ranks-panel")).splitlines()
        row = next(line for line in ranks if "node1 " in line)
        assert "waiting: tokenize" in row and "5:00" in row
        assert "tokenize" in next(line for line in ranks if "node0 " in line)
        for host in ("node0", "node1", "node2", "node3"):
            assert background(app, host) != STRAGGLER_RED
        assert "⚠" not in screen_text(app)


# --- issue 17: quality over steps, runs side by side --------------------------------------------


async def test_judge_panel_charts_judged_evals_beside_val_loss_and_the_final_verdict(writer):
    writer.start()
    for step in (20, 40, 60):
        writer.steps(step - 19, step)
        writer.eval(step)
        writer.eval_responses(step)
        if step < 60:  # the judge has not scored step 60's responses yet
            writer.judged_eval(step, 30 + step / 2, (25 + step / 2, 35 + step / 2))
    app = make_app(writer.run_dir, Clock(writer.time))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for_text(pilot, "step 60/232")
        await pilot.press("tab", "tab", "tab")
        panel = app.screen.query_one("#judge-panel")
        await wait_for(pilot, lambda: "judged evals 2" in widget_text(panel))
        lines = [line[2:-1].rstrip() for line in widget_text(panel).splitlines()[1:-1]]
        assert lines[0] == "judged evals 2 (1 waiting for the judge)  step 40: 50.00 [45.0, 55.0]"
        assert lines[1] == "no judge of the test responses yet"
        assert lines[2].split() == ["━", "val", "loss", "━", "judge", "mean", "┃", "95%", "CI"]
        judge_axis = [line[39:].split()[0] for line in lines[3:7] if line[39:].split()[:1] != [""]]
        assert [label for label in judge_axis if label[0].isdigit()] == ["55", "35"]  # the CIs' ends
        assert lines[7].split() == ["20", "step", "60", "20", "step", "60"]  # the same steps
        writer.judged_eval(60, 60.0, (55.0, 65.0))
        await wait_for(pilot, lambda: "judged evals 3  step 60: 60.00 [55.0, 65.0]" in widget_text(panel))
        writer.end("completed", 60)
        writer.judge_start()
        await wait_for(pilot, lambda: "judging the test responses with llama3 (ollama)…" in widget_text(panel))
        writer.judge_end()
        await wait_for(pilot, lambda: "final 51.75 [47.2, 56.3]  base 38.10  tuned − base +13.60 [9.8, 17.5]"
                       in widget_text(panel))


async def test_runs_list_shows_quality_and_sorts_by_any_column(tmp_path):
    runs_to_compare(tmp_path / "runs")
    app = make_app(tmp_path / "runs", Clock(0.0))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for_text(pilot, "run-a")
        table = widget_text(app.screen.query_one("#runs")).splitlines()
        assert table[0].split() == ["run", "model", "status", "steps", "val", "judge", "tuned−base", "duration"]
        assert [line.split() for line in table[1:4]] == [
            ["run-c", "tiny", "running", "15/40", "-", "-", "-", "9", "s"],
            ["run-b", "gpt2-medium", "completed", "60/60", "0.612", "54.0±5.0", "+14.0±4.0", "33", "s"],
            ["run-a", "gpt2-medium", "completed", "60/60", "0.652", "50.0±5.0", "+10.0±4.0", "33", "s"],
        ]

        async def order_after(key: str) -> list[str]:
            await pilot.press(key)
            lines = widget_text(app.screen.query_one("#runs")).splitlines()
            return [line.split()[0] for line in lines[1:4]]

        assert await order_after("5") == ["run-b", "run-a", "run-c"]  # val, lowest first, unknown last
        assert "val ▲" in screen_text(app)
        assert await order_after("5") == ["run-a", "run-b", "run-c"]  # again: reversed
        assert "val ▼" in screen_text(app)
        assert await order_after("6") == ["run-a", "run-b", "run-c"]  # judge mean
        assert await order_after("1") == ["run-a", "run-b", "run-c"]  # name
        assert await order_after("3") == ["run-a", "run-b", "run-c"]  # status
        assert await order_after("8") == ["run-c", "run-a", "run-b"]  # duration
        await pilot.press("question_mark")
        await wait_for_text(pilot, "Sort by a column")
        help_text = screen_text(app)
        for i, column in enumerate(COLUMNS):
            assert f" {i + 1} {column.title} " in help_text


async def test_selected_runs_open_a_comparison(tmp_path):
    runs_to_compare(tmp_path / "runs")
    app = make_app(tmp_path / "runs", Clock(0.0))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for_text(pilot, "run-a")
        await pilot.press("down", "space", "c")  # one run is not a comparison
        await wait_for_text(pilot, "select two or more runs with space, then press c")
        await pilot.press("down", "space")
        await wait_for_text(pilot, "2 selected")
        assert [line.split()[0] for line in screen_text(app).splitlines()[2:5]] == ["run-c", "●", "●"]
        await pilot.press("c")
        await wait_for_text(pilot, "comparing 2 runs")
        await wait_for_text(pilot, "lr")
        await settle(pilot)
        lines = screen_text(app).splitlines()
        assert lines[1].split() == ["run", "status", "val", "judge", "tuned−base"]
        assert lines[2].split() == ["━", "1", "run-b", "completed", "0.612", "54.0±5.0", "+14.0±4.0"]
        assert lines[3].split() == ["━", "2", "run-a", "completed", "0.652", "50.0±5.0", "+10.0±4.0"]
        assert "Validation loss" in lines[4] and "Judge mean score" in lines[4]
        judge_chart = [line.split("│")[3].split() for line in lines[5:12]]
        judge_axis = [words[0] for words in judge_chart if words and words[0][0].isdigit()]
        assert judge_axis == ["64", "52", "40"]  # both runs' means: 40 (run-a, step 20) .. 64 (run-b, step 60)
        config = [line.strip("│ ") for line in widget_text(app.screen.query_one("#config-panel")).splitlines()]
        assert config[1].split() == ["config", "key", "1", "2"]
        assert config[2].split() == ["lr", "0.0001", "5e-05"]  # the only key that differs
        assert "model" not in " ".join(config[3:])
        segments = [segment for strip in app.screen._compositor.render_strips() for segment in strip
                    if segment.style and segment.style.color]
        legend = [next(s.style.color for s in segments if s.text.startswith(f"━ {n}")) for n in (1, 2)]
        dots = {s.style.color for s in segments if any("⠁" <= ch <= "⣿" for ch in s.text)}
        assert legend[0] != legend[1] and set(legend) <= dots  # each run in its colour, legend and charts
        await pilot.press("t")
        await wait_for_text(pilot, "Train loss (ema)")
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen))
        assert "2 selected" in screen_text(app)
