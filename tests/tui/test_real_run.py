"""A real run followed live: `deepspeed launch/train.py` with 2 CPU ranks (gloo) and the tiny
preset writes a run directory while the dashboard, started before the directory exists,
follows it to `completed`."""

from __future__ import annotations


import pytest

from testkit.paths import REPO
from tests.tui.conftest import Clock, make_app, screen_text, wait_for
from tui.follow import Skipped
from tui.dashboard import DashboardScreen

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

MAX_STEPS = 6


async def test_follows_a_real_two_rank_run_to_completed(tmp_path):
    if not (REPO / "launch" / "train.py").is_file():
        pytest.skip("launch/train.py not present yet")
    from tests.trainer.launcher import TINY, kill_group, start, wait

    run_dir = tmp_path / "20261125-140000-tiny"
    app = make_app(run_dir, Clock(0.0), interval_s=0.2)  # a still clock: nothing goes stale
    async with app.run_test(size=(80, 24)) as pilot:
        proc = start([*TINY, "--max-steps", str(MAX_STEPS), "--eval-every", "3",
                      "--max-new-tokens", "4", "--out", str(run_dir)])
        seen = []
        try:
            def status_seen() -> bool:
                line = screen_text(app).splitlines()[0]
                status = line.split()[-1]
                if not seen or seen[-1] != status:
                    seen.append(status)
                return status == "COMPLETED"

            await wait_for(pilot, status_seen, timeout=300)
        finally:
            if proc.poll() is None and "COMPLETED" not in seen:
                kill_group(proc)
        code, log = wait(proc, timeout=120)
        assert code == 0, log[-4000:]
        await pilot.pause(0.5)
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        text = screen_text(app)
        assert "RUNNING" in seen and seen[-1] == "COMPLETED", seen
        assert f"step {MAX_STEPS}/{MAX_STEPS}" in text
        assert "tiny  2 ranks" in text.splitlines()[0]
        state = screen.state
        assert [b.step for b in state.series["loss"].points()] == list(range(1, MAX_STEPS + 1))
        assert state.series["val_loss"].points() and state.samples
        assert sorted(state.heartbeats) == [0, 1]
        assert state.skipped() == Skipped()
