"""One line at the bottom: the screen's keys, then counters (lines skipped, paused, events read;
runs selected)."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from tui.follow import Skipped

WARNING = "bold black on yellow"


def counters(events_read: int, skipped: Skipped, paused: bool) -> Text:
    """A followed run's counters: what was skipped and why, paused, events read."""
    text = Text()
    if skipped.corrupt:
        text.append(f" corrupt lines: {skipped.corrupt} ", style=WARNING)
    if skipped.unknown_version:  # written by a newer trainer: this dashboard cannot read them
        text.append(f" unknown v lines: {skipped.unknown_version} ", style=WARNING)
    if paused:
        text.append(" PAUSED ", style=WARNING)
    return text.append(f" {events_read} events ", style="dim")


class StatusBar(Widget):
    DEFAULT_CSS = "StatusBar { height: 1; background: $panel; }"

    def __init__(self, keys: tuple[tuple[str, str], ...], **kwargs):
        super().__init__(**kwargs)
        self.keys = keys  # (key, what it does)
        self.right = Text("")

    def show(self, right: Text) -> None:
        if right.plain != self.right.plain:
            self.right = right
            self.refresh()

    def render(self) -> Text:
        left = Text()
        for key, action in self.keys:
            left.append(f" {key}", style="bold")
            left.append(f" {action}")
        left.truncate(max(0, self.size.width - len(self.right)))
        return left + Text(" " * max(0, self.size.width - len(left) - len(self.right))) + self.right
