"""The screen that follows one run: header, loss, throughput, and the ranks, samples, events and
judge panels; and what it shares with the comparison of runs, the following itself.

A worker thread does all file I/O: it polls each run directory every `interval_s` (reading only
what the files gained) and feeds its RunState under a lock. The UI thread redraws on a timer at
the same pace, so however fast events arrive the screen is redrawn at most once per interval,
and only the panels whose data changed are re-rendered.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container, Horizontal, VerticalScroll
from textual.screen import Screen
from textual.worker import get_current_worker

from tui.follow import RunFollower
from tui.state import RunState, Thresholds
from tui.widgets import (EventsPanel, JudgePanel, LossChart, RanksPanel, RunHeader, SamplesPanel,
                         StatusBar, ThroughputPanel)
from tui.widgets.statusbar import counters

LARGE = (120, 36)  # from this terminal size on, every panel shows at once


@dataclass(frozen=True)
class DashboardConfig:
    interval_s: float = 1.0  # how often the files are polled and the screen redrawn
    thresholds: Thresholds = field(default_factory=Thresholds)


@dataclass
class FollowedRun:
    """One run directory being followed: its reader (used by the worker thread only) and the
    state it feeds."""

    path: Path
    follower: RunFollower
    state: RunState


class FollowingScreen(Screen):
    """A screen showing runs that a worker thread follows; subclasses draw them in `redraw()`,
    which runs on the UI thread every interval, once the files have been read."""

    def __init__(self, paths: list[Path], config: DashboardConfig, clock: Callable[[], float]):
        super().__init__()
        self.config = config
        self.clock = clock
        self.runs = [FollowedRun(path, RunFollower(path, clock), RunState(config.thresholds))
                     for path in paths]
        self.lock = threading.Lock()  # the states are fed by the worker and read by the UI
        self.wake = threading.Event()  # cuts the worker's sleep short (resume, exit)
        self.paused = False
        self.polls = 0  # completed polls of every run, for tests and benchmarks

    def on_mount(self) -> None:
        # Textual calls every class's on_mount, a subclass's first: subclasses do not call this.
        self.run_worker(self.follow, thread=True, name="follow")
        self.set_interval(self.config.interval_s, self.redraw)

    def on_unmount(self) -> None:
        self.wake.set()

    def follow(self) -> None:
        """In the worker thread: poll every run, again at once while a file has more to read."""
        worker = get_current_worker()
        while not worker.is_cancelled:
            more = False
            if not self.paused:
                for run in self.runs:
                    poll = run.follower.poll()
                    with self.lock:
                        run.state.apply_poll(poll, self.clock())
                    more = more or poll.more
                with self.lock:
                    self.polls += 1
            if not more:  # a large file is read slice after slice without sleeping
                self.wake.wait(self.config.interval_s)
                self.wake.clear()

    def redraw(self) -> None:
        raise NotImplementedError


class DashboardScreen(FollowingScreen):
    BINDINGS = [
        Binding("p", "toggle_pause", "pause"),
        Binding("s", "toggle_smooth", "smooth"),
        Binding("l", "toggle_log", "log scale"),
        Binding("tab", "cycle_panel", "next panel", priority=True),
    ]
    KEYS = (("q", "quit"), ("p", "pause"), ("s", "smooth"), ("l", "log"), ("tab", "panel"), ("?", "help"))
    PANELS = (("ranks", "Ranks"), ("samples", "Samples"), ("events", "Events"), ("judge", "Judge"))
    HELP = """\
[b]q[/b]      quit
[b]p[/b]      pause / resume following the files
[b]s[/b]      smooth the train loss (EMA, weight 0.9)
[b]l[/b]      log scale for the loss
[b]tab[/b]    next panel (ranks, samples, events, judge)
[b]↑ ↓[/b]    scroll the panel
[b]escape[/b] back to the runs list (when opened from it)
[b]?[/b]      this help (any key closes it)

Status: [b]waiting[/b] (no run_start yet), [b]running[/b], [b]stalled[/b] (metrics.jsonl \
silent, or without a run_start, for longer than --stall-after; before metrics.jsonl exists, \
config.json and the heartbeats silent that long), or the run's end: \
[b]completed[/b], [b]interrupted[/b], [b]failed[/b].
A rank's row turns red when the rank is silent, stuck in a non-collective phase while \
others wait, or far behind the others (a straggler). "heard" uses this machine's clock.
Judge: each judged evaluation's mean score (95% CI) beside the validation loss, and the \
test responses' verdict, tuned − base."""

    def __init__(self, run_dir: Path, config: DashboardConfig, clock: Callable[[], float]):
        super().__init__([run_dir], config, clock)
        self.run_dir = run_dir
        self.state = self.runs[0].state
        self.panel = 0

    def compose(self) -> ComposeResult:
        yield RunHeader(self.run_dir.name, id="header")
        with Horizontal(id="top"):
            yield LossChart(id="loss")
            yield ThroughputPanel(id="throughput")
        with Container(id="panels"):
            yield VerticalScroll(RanksPanel(id="ranks"), id="ranks-panel", classes="panel")
            yield VerticalScroll(SamplesPanel(id="samples"), id="samples-panel", classes="panel")
            yield VerticalScroll(EventsPanel(id="events"), id="events-panel", classes="panel")
            yield VerticalScroll(JudgePanel(id="judge"), id="judge-panel", classes="panel")
        yield StatusBar(self.KEYS, id="status")

    def on_mount(self) -> None:
        self.query_one("#loss").border_title = "Loss"
        self.query_one("#throughput").border_title = "Throughput"
        self.show_panel(0)

    def on_resize(self, event) -> None:
        self.set_class(event.size.width >= LARGE[0] and event.size.height >= LARGE[1], "-large")

    def redraw(self) -> None:
        if not self.polls:  # nothing read yet: say nothing rather than something wrong
            return
        status = self.query_one(StatusBar)
        if self.paused:
            status.show(counters(self.state.events_read, self.state.skipped(), paused=True))
            return
        now = self.clock()
        with self.lock:
            state = self.state
            state.check_stragglers(now)
            self.query_one(RunHeader).show(state, now)
            self.query_one(LossChart).show(state)
            self.query_one(ThroughputPanel).show(state)
            self.query_one(RanksPanel).show(state, now)
            self.query_one(SamplesPanel).show(state)
            events_version = self.query_one(EventsPanel).version
            self.query_one(EventsPanel).show(state)
            self.query_one(JudgePanel).show(state)
            status.show(counters(state.events_read, state.skipped(), paused=False))
        if self.query_one(EventsPanel).version != events_version:
            self.query_one("#events-panel").scroll_end(animate=False)

    def show_panel(self, index: int) -> None:
        self.panel = index % len(self.PANELS)
        for i, (name, title) in enumerate(self.PANELS):
            container = self.query_one(f"#{name}-panel")
            container.set_class(i == self.panel, "-current")
            container.border_title = title
            container.border_subtitle = f"tab {i + 1}/{len(self.PANELS)}" if i == self.panel else ""
        self.query_one(f"#{self.PANELS[self.panel][0]}-panel").focus()

    def action_cycle_panel(self) -> None:
        self.show_panel(self.panel + 1)

    def action_toggle_pause(self) -> None:
        self.paused = not self.paused
        self.wake.set()
        self.redraw()

    def action_toggle_smooth(self) -> None:
        chart = self.query_one(LossChart)
        chart.smooth = not chart.smooth
        self.update_loss_title()

    def action_toggle_log(self) -> None:
        chart = self.query_one(LossChart)
        chart.log_y = not chart.log_y
        self.update_loss_title()

    def update_loss_title(self) -> None:
        chart = self.query_one(LossChart)
        modes = [name for name, on in (("ema", chart.smooth), ("log", chart.log_y)) if on]
        chart.border_title = "Loss" + (f" ({', '.join(modes)})" if modes else "")
        chart.refresh()
