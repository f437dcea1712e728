"""One line at the bottom: the keys, then counters (lines skipped, paused, events read)."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from tui.follow import Skipped

KEYS = (("q", "quit"), ("p", "pause"), ("s", "smooth"), ("l", "log"), ("tab", "panel"), ("?", "help"))


class StatusBar(Widget):
    DEFAULT_CSS = "StatusBar { height: 1; background: $panel; }"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.right = Text("")

    def show(self, events_read: int, skipped: Skipped, paused: bool) -> None:
        right = Text()
        if skipped.corrupt:
            right.append(f" corrupt lines: {skipped.corrupt} ", style="bold black on yellow")
        if skipped.unknown_version:  # written by a newer trainer: this dashboard cannot read them
            right.append(f" unknown v lines: {skipped.unknown_version} ", style="bold black on yellow")
        if paused:
            right.append(" PAUSED ", style="bold black on yellow")
        right.append(f" {events_read} events ", style="dim")
        if right.plain != self.right.plain:
            self.right = right
            self.refresh()

    def render(self) -> Text:
        left = Text()
        for key, action in KEYS:
            left.append(f" {key}", style="bold")
            left.append(f" {action}")
        left.truncate(max(0, self.size.width - len(self.right)))
        return left + Text(" " * max(0, self.size.width - len(left) - len(self.right))) + self.right
