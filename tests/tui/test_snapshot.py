"""The screen at 80x24 in the middle of a run, compared exactly (the clock is injected).
Update with `pytest tests/tui/test_snapshot.py --snapshot-update` and look at the SVG."""

from __future__ import annotations

from tests.tui.conftest import Clock, make_app, mid_run, settle, wait_for_text


def test_mid_run_at_80x24(snap_compare, writer):
    mid_run(writer)
    app = make_app(writer.run_dir, Clock(writer.time + 5))

    async def loaded(pilot):
        await wait_for_text(pilot, "step 120/232")
        await settle(pilot)

    assert snap_compare(app, terminal_size=(80, 24), run_before=loaded)
