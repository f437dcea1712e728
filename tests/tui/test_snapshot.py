"""Screens at 80x24, compared exactly (the clock is injected, the files dated): the middle of a
run, the judge panel, the runs list and a comparison of two runs. Update with
`pytest tests/tui/test_snapshot.py --snapshot-update` and look at the SVGs."""

from __future__ import annotations

from tests.tui.conftest import (Clock, judged_run, make_app, mid_run, runs_to_compare, settle,
                                wait_for_text)


def test_mid_run_at_80x24(snap_compare, writer):
    mid_run(writer)
    writer.touch(writer.time)
    app = make_app(writer.run_dir, Clock(writer.time + 5))

    async def loaded(pilot):
        await wait_for_text(pilot, "step 120/232")
        await settle(pilot)

    assert snap_compare(app, terminal_size=(80, 24), run_before=loaded)


def test_judge_panel_at_80x24(snap_compare, tmp_path):
    run = judged_run(tmp_path / "20261125-140000-gpt2-medium")
    run.touch(run.time)
    app = make_app(run.run_dir, Clock(run.time + 5))

    async def judge_panel(pilot):
        await wait_for_text(pilot, "COMPLETED")
        await pilot.press("tab", "tab", "tab")
        await wait_for_text(pilot, "tuned − base")
        await settle(pilot)

    assert snap_compare(app, terminal_size=(80, 24), run_before=judge_panel)


def test_runs_list_at_80x24(snap_compare, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the title shows the path given: the same on every machine
    runs_to_compare(tmp_path / "runs")
    app = make_app("runs", Clock(0.0))

    async def listed(pilot):
        await wait_for_text(pilot, "run-a")
        await pilot.press("down", "space", "5")
        await wait_for_text(pilot, "val ▲")

    assert snap_compare(app, terminal_size=(80, 24), run_before=listed)


def test_comparison_of_two_runs_at_80x24(snap_compare, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs_to_compare(tmp_path / "runs")
    app = make_app("runs", Clock(0.0))

    async def compared(pilot):
        await wait_for_text(pilot, "run-a")
        await pilot.press("down", "space", "down", "space", "c")
        await wait_for_text(pilot, "lr")
        await settle(pilot)

    assert snap_compare(app, terminal_size=(80, 24), run_before=compared)
