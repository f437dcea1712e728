"""What the panels share: redraw only when the RunState changed (its `version`)."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from tui.state import RunState


class FollowsState:
    """Mixin for a panel that copies data out of the state: `stale()` says, once per change,
    that it must copy again."""

    version = -1

    def stale(self, state: RunState) -> bool:
        if state.version == self.version:
            return False
        self.version = state.version
        return True


class TextPanel(FollowsState, Static):
    """A panel whose text is made from the state alone (not the clock or the terminal size)."""

    def show(self, state: RunState) -> None:
        if self.stale(state):
            self.update(self.text(state))

    def text(self, state: RunState) -> Text:
        raise NotImplementedError
