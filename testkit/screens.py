"""A Textual app's screen as plain text, as a terminal would show it: for tests and benchmarks."""

from __future__ import annotations


def screen_text(app) -> str:
    """The screen as plain text, as a terminal would show it."""
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())
