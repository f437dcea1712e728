"""Fixtures for the dashboard's tests: synthetic run directories, a clock the test sets, and
helpers that read what is on the (headless) screen."""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
import pytest

from testkit.runs import RunWriter, judge_summary
from testkit.screens import screen_text
from tui.app import DashboardApp
from tui.dashboard import DashboardConfig, FollowingScreen
from tui.state import Thresholds

RUN_NAME = "20261125-140000-gpt2-medium"


class Clock:
    """The dashboard's clock, set by the test."""

    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio through anyio's pytest plugin (`pytest.mark.anyio`)."""
    return "asyncio"


@pytest.fixture
def writer(tmp_path) -> RunWriter:
    return RunWriter(tmp_path / RUN_NAME)


def mid_run(writer: RunWriter) -> RunWriter:
    """120 of 232 steps, evals every 20, a checkpoint, an alert, two heartbeating ranks."""
    writer.start()
    writer.steps(1, 100, eval_every=20)
    writer.checkpoint(100)
    writer.steps(101, 120, eval_every=20)
    writer.alert(57, "nonfinite_loss", "loss is nan on rank 1; global batch skipped", rank=1)
    writer.heartbeat(0, 120, "backward", phase_for=0.3)
    writer.heartbeat(1, 120, "forward", phase_for=0.1)
    return writer


# Text a run may write that looks like Rich/Textual markup (or an emoji code): shown as is, never
# parsed. The error is the shape of a real gloo failure, whose `[/__w/...]` made Rich raise
# MarkupError (a closing tag with no opening one).
MARKUP_RUN_NAME = "20261125-[bold]run"
MARKUP_MODEL = "gpt2 [/x] [bold]"
MARKUP_HOST = "n[/h][red]0"
MARKUP_ERROR = "RuntimeError: [/__w/x.cc:537] Read error [bold]"
MARKUP_ALERT = "loss is [red]boom[/red] :boom:"
MARKUP_RESPONSE = "[bold]not bold[/bold] [/__w/x.cc:537] :smile:"
MARKUP_JUDGE = "[/j]llama[red]3"


def markup_run(run_dir: Path) -> RunWriter:
    """A failed run whose every free-text field looks like markup."""
    writer = RunWriter(run_dir, model=MARKUP_MODEL, hosts=[MARKUP_HOST, "node1"])
    writer.start()
    writer.steps(1, 20)
    writer.sample(20, MARKUP_RESPONSE)
    writer.alert(20, "nonfinite_loss", MARKUP_ALERT, rank=1)
    writer.heartbeat(0, 20, "backward")
    writer.heartbeat(1, 20, "forward")
    writer.end("failed", 20, error=MARKUP_ERROR)
    summary = judge_summary()
    summary["judge"]["model"] = MARKUP_JUDGE
    (writer.run_dir / "scores.summary.json").write_bytes(orjson.dumps(summary))
    return writer


def make_app(run_dir: Path, clock: Clock, interval_s: float = 0.05, **thresholds) -> DashboardApp:
    return DashboardApp(run_dir, DashboardConfig(interval_s=interval_s, thresholds=Thresholds(**thresholds)),
                        clock=clock)


@asynccontextmanager
async def following_mid_run(writer: RunWriter, clock: Clock | None = None, size=(80, 24), **thresholds):
    """The app following `mid_run(writer)`, written just now by the dashboard's clock, once the
    mid-run state is on screen."""
    mid_run(writer)
    clock = clock or Clock(writer.time)
    writer.touch(clock.now)
    app = make_app(writer.run_dir, clock, **thresholds)
    async with app.run_test(size=size) as pilot:
        await wait_for_text(pilot, "step 120/232")
        yield app, pilot


async def wait_for(pilot, condition, timeout: float = 10.0) -> None:
    """Let the app run until `condition()` holds (the worker polls every 50 ms in tests)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; screen:\n{screen_text(pilot.app)}")
        await pilot.pause(0.05)


async def wait_for_text(pilot, text: str, timeout: float = 10.0) -> None:
    await wait_for(pilot, lambda: text in screen_text(pilot.app), timeout)


async def settle(pilot) -> None:
    """Wait until the worker has polled and the screen has been redrawn since."""
    screen = pilot.app.screen
    assert isinstance(screen, FollowingScreen)
    polls = screen.polls
    await wait_for(pilot, lambda: screen.polls >= polls + 2)
    screen.redraw()
    await pilot.pause()


def judged_run(run_dir: Path, model: str = "gpt2-medium", lr: float = 5e-5, quality: float = 0.0,
               steps: int = 60, judge: bool = True) -> RunWriter:
    """A completed run with `--judge-samples`: an eval every 20 steps, each judged (mean score
    30 + step / 2 + quality, CI ± 5), its config (`lr`), and with `judge` the test responses
    judged against the base model: 50 + quality [45 + quality, 55 + quality], tuned − base
    10 + quality [6 + quality, 14 + quality]."""
    writer = RunWriter(run_dir, model=model, total_steps=steps, steps_per_epoch=steps // 2)
    writer.config(lr=lr)
    writer.start()
    for step in range(1, steps + 1):
        writer.train(step)
        if step % 20 == 0:
            writer.eval(step, val_loss=1.5 - step / 100 - quality / 100)
            writer.eval_responses(step)
            mean = 30 + step / 2 + quality
            writer.judged_eval(step, mean, (mean - 5, mean + 5))
    writer.end("completed", steps, final_val_loss=0.652 - quality / 100)
    if judge:
        writer.judge_start()
        writer.judge_end(50 + quality, (45 + quality, 55 + quality), base_mean=40.0,
                         difference=(10 + quality, (6 + quality, 14 + quality)))
    return writer


def runs_to_compare(root: Path) -> list[RunWriter]:
    """Three runs under `root`, newest last: run-a and run-b judged (run-b better, with twice
    the learning rate), run-c a tiny run still going, not judged."""
    a = judged_run(root / "run-a", lr=5e-5)
    b = judged_run(root / "run-b", lr=1e-4, quality=4.0)
    c = RunWriter(root / "run-c", model="tiny", total_steps=40)
    c.config(model="tiny")
    c.start()
    c.steps(1, 15, eval_every=5)
    for age, writer in zip((300, 200, 0), (a, b, c)):
        writer.touch(c.time - age)
    return [a, b, c]
