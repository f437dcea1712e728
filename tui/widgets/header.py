"""Header: run, model, ranks and hosts, status; step, progress bar, epoch, elapsed and ETA; the
newest alert, flashed for a while after it arrives."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from tui.state import RunState

STATUS_STYLES = {
    "running": "bold black on green",
    "stalled": "bold black on yellow",
    "completed": "bold white on blue",
    "interrupted": "bold black on yellow",
    "failed": "bold white on red",
    "waiting": "bold white on grey37",
}
BAR_MAX_WIDTH = 30


def progress_bar(done: int, total: int | None, width: int) -> str:
    if not total or width <= 0:
        return ""
    filled = min(width, round(width * done / total))
    return "█" * filled + "░" * (width - filled)


class RunHeader(Widget):
    DEFAULT_CSS = "RunHeader { height: 3; padding: 0 1; background: $boost; }"

    def __init__(self, run_name: str, **kwargs):
        super().__init__(**kwargs)
        self.run_name = run_name
        self.status = ""  # none until the files have been read once
        self.description = ""
        self.step = 0
        self.total: int | None = None
        self.timing = ""
        self.alert: str | None = None

    def show(self, state: RunState, now: float) -> None:
        self.status = state.status(now)
        self.description = state.describe()
        self.step, self.total = state.step(), state.total_steps()
        self.timing = state.timing()
        self.alert = state.active_alert(now)
        self.refresh()

    def render(self) -> Text:
        width = self.size.width
        # Line 1: what runs where, and its status on the right.
        line1 = Text(self.run_name, style="bold")
        if self.description:
            line1.append("  " + self.description)
        badge = f" {self.status.upper()} " if self.status else ""
        line1.truncate(max(0, width - len(badge) - 1), overflow="ellipsis")
        line1.append(" " * max(1, width - len(line1) - len(badge)))
        line1.append(badge, style=STATUS_STYLES.get(self.status, "bold"))
        # Line 2: progress.
        total = self.total
        head = f"step {self.step}/{total or '?'} "
        percent = f" {100 * self.step / total:3.0f}% " if total else " "
        bar_width = max(0, min(BAR_MAX_WIDTH, width - len(head) - len(percent) - len(self.timing)))
        line2 = Text(head)
        line2.append(progress_bar(self.step, total, bar_width), style="green")
        line2.append(percent + self.timing)
        # Line 3: the newest alert while it is fresh.
        line3 = Text(f"⚠ {self.alert}", style="bold white on red") if self.alert else Text("")
        for line in (line2, line3):
            line.truncate(width, overflow="ellipsis")
        return Text("\n").join([line1, line2, line3])
