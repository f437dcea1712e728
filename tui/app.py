"""The dashboard app: follows one run directory (tui/dashboard.py), or lists the runs under one
(tui/runs_screen.py), from which runs open and compare (tui/compare.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from textual.app import App
from textual.binding import Binding
from textual.screen import ModalScreen
from textual.widgets import Static

from tui.dashboard import DashboardConfig, DashboardScreen
from tui.runs import is_run_dir
from tui.runs_screen import RunsScreen


class HelpScreen(ModalScreen):
    """The keys of the screen below it; any key closes it."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def compose(self):
        yield Static(self.text, id="help")

    def on_key(self, event) -> None:
        event.stop()
        self.dismiss()


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
        keys = getattr(self.screen, "HELP", "")  # each screen says what its keys do
        self.push_screen(HelpScreen(f"[b]gpt2-instruct dashboard[/b]\n\n{keys}"))

    def action_back(self) -> None:
        """From a run or a comparison opened from the runs list, back to the list."""
        if len(self.screen_stack) > 2:
            self.pop_screen()


def is_runs_root(path: Path) -> bool:
    """A directory that is not itself a run but holds runs (a run directory that does not
    exist yet, or is still empty, is followed: its files will come)."""
    return path.is_dir() and not is_run_dir(path) and any(
        child.is_dir() and is_run_dir(child) for child in path.iterdir())
