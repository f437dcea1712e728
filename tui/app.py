"""The dashboard: a Textual app that follows one run directory, or lists the runs under one.

A worker thread does all file I/O: it polls the run directory every `interval_s` (reading only
what the files gained) and feeds the RunState under a lock. The UI thread redraws on a timer at
the same pace, so however fast events arrive the screen is redrawn at most once per interval,
and only the panels whose data changed are re-rendered.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Container, Horizontal, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Static
from textual.worker import get_current_worker

from tui.follow import RunFollower
from tui.format import literal
from tui.runs import COLUMNS, RunSummary, is_run_dir, list_runs
from tui.state import RunState, Thresholds
from tui.widgets import (EventsPanel, JudgePanel, LossChart, RanksPanel, RunHeader, SamplesPanel,
                         StatusBar, ThroughputPanel)

LARGE = (120, 36)  # from this terminal size on, every panel shows at once

HELP = """\
[b]gpt2-instruct dashboard[/b]

[b]q[/b]      quit
[b]p[/b]      pause / resume following the files
[b]s[/b]      smooth the train loss (EMA, weight 0.9)
[b]l[/b]      log scale for the loss
[b]tab[/b]    next panel (ranks, samples, events, judge)
[b]↑ ↓[/b]    scroll the panel
[b]?[/b]      this help (any key closes it)

Status: [b]running[/b], [b]stalled[/b] (metrics.jsonl silent for longer than --stall-after), \
or the run's end: [b]completed[/b], [b]interrupted[/b], [b]failed[/b].
A rank's row turns red when the rank is silent, stuck in a non-collective phase while \
others wait, or far behind the others (a straggler). "heard" uses this machine's clock."""


@dataclass(frozen=True)
class DashboardConfig:
    interval_s: float = 1.0  # how often the files are polled and the screen redrawn
    thresholds: Thresholds = field(default_factory=Thresholds)


class HelpScreen(ModalScreen):
    def compose(self) -> ComposeResult:
        yield Static(HELP, id="help")

    def on_key(self, event) -> None:
        event.stop()
        self.dismiss()


class DashboardScreen(Screen):
    BINDINGS = [
        Binding("p", "toggle_pause", "pause"),
        Binding("s", "toggle_smooth", "smooth"),
        Binding("l", "toggle_log", "log scale"),
        Binding("tab", "cycle_panel", "next panel", priority=True),
    ]
    PANELS = (("ranks", "Ranks"), ("samples", "Samples"), ("events", "Events"), ("judge", "Judge"))

    def __init__(self, run_dir: Path, config: DashboardConfig, clock: Callable[[], float]):
        super().__init__()
        self.run_dir = run_dir
        self.config = config
        self.clock = clock
        self.state = RunState(config.thresholds)
        self.lock = threading.Lock()  # the state is fed by the worker and read by the UI
        self.wake = threading.Event()  # cuts the worker's sleep short (resume, exit)
        self.paused = False
        self.panel = 0
        self.polls = 0  # completed polls, for tests and benchmarks

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
        yield StatusBar(id="status")

    def on_mount(self) -> None:
        self.query_one("#loss").border_title = "Loss"
        self.query_one("#throughput").border_title = "Throughput"
        self.show_panel(0)
        self.run_worker(self.follow, thread=True, exclusive=True, name="follow")
        self.set_interval(self.config.interval_s, self.redraw)

    def on_unmount(self) -> None:
        self.wake.set()

    def on_resize(self, event) -> None:
        self.set_class(event.size.width >= LARGE[0] and event.size.height >= LARGE[1], "-large")

    # --- the worker thread: all file I/O ------------------------------------------------------

    def follow(self) -> None:
        worker = get_current_worker()
        follower = RunFollower(self.run_dir, self.clock)
        while not worker.is_cancelled:
            more = False
            if not self.paused:
                poll = follower.poll()
                with self.lock:
                    self.state.apply_poll(poll, self.clock())
                    self.polls += 1
                more = poll.more
            if not more:  # a large file is read slice after slice without sleeping
                self.wake.wait(self.config.interval_s)
                self.wake.clear()

    # --- the UI thread ------------------------------------------------------------------------

    def redraw(self) -> None:
        if not self.polls:  # nothing read yet: say nothing rather than something wrong
            return
        status = self.query_one(StatusBar)
        if self.paused:
            status.show(self.state.events_read, self.state.skipped(), paused=True)
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
            status.show(state.events_read, state.skipped(), paused=False)
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


class RunsScreen(Screen):
    """The runs under a directory, newest first; enter opens one."""

    BINDINGS = [Binding("r", "reload", "reload")]

    def __init__(self, root: Path, config: DashboardConfig, clock: Callable[[], float]):
        super().__init__()
        self.root = root
        self.config = config
        self.clock = clock
        self.paths: list[Path] = []

    def compose(self) -> ComposeResult:
        title = literal(f"runs in {self.root}", style="bold")  # a path may hold [ ]
        yield Static(title + "   enter: open   r: reload   q: quit", id="runs-title")
        yield DataTable(id="runs", cursor_type="row")

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns(*COLUMNS)
        self.action_reload()

    def action_reload(self) -> None:
        self.run_worker(self.read_runs, thread=True, exclusive=True, name="runs")

    def read_runs(self) -> None:
        """In a worker thread: the listing reads a little of every run's files."""
        summaries = list_runs(self.root, self.clock(), self.config.thresholds)
        self.app.call_from_thread(self.show_runs, summaries)

    def show_runs(self, summaries: list[RunSummary]) -> None:
        table = self.query_one(DataTable)
        table.clear()
        self.paths = [summary.path for summary in summaries]
        for summary in summaries:
            table.add_row(*map(literal, summary.cells()))  # run ids and models as is
        table.focus()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.app.push_screen(DashboardScreen(self.paths[event.cursor_row], self.config, self.clock))


class DashboardApp(App):
    """`path` is a run directory (followed, even before it exists) or a directory of runs
    (listed)."""

    CSS_PATH = "app.tcss"
    TITLE = "gpt2-instruct"
    BINDINGS = [
        Binding("q", "quit", "quit"),
        Binding("question_mark", "help", "help"),
        Binding("escape", "back", "back", show=False),
    ]

    def __init__(self, path: str | Path, config: DashboardConfig = DashboardConfig(),
                 clock: Callable[[], float] = time.time):
        super().__init__()
        self.path = Path(path)
        self.config = config
        self.clock = clock
        self.lists_runs = is_runs_root(self.path)  # decided once, before the UI starts

    def on_mount(self) -> None:
        if self.lists_runs:
            self.push_screen(RunsScreen(self.path, self.config, self.clock))
        else:
            self.push_screen(DashboardScreen(self.path, self.config, self.clock))

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_back(self) -> None:
        """From a run opened from the list, back to the list."""
        if isinstance(self.screen, DashboardScreen) and len(self.screen_stack) > 2:
            self.pop_screen()


def is_runs_root(path: Path) -> bool:
    """A directory that is not itself a run but holds runs (a run directory that does not
    exist yet, or is still empty, is followed: its files will come)."""
    return path.is_dir() and not is_run_dir(path) and any(
        child.is_dir() and is_run_dir(child) for child in path.iterdir())
