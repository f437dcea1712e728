"""Short human formats for numbers, sizes and durations, shared by the screen and `--once`; and
`literal()`, the one way text read from a run's files reaches Rich or Textual."""

from __future__ import annotations

from rich.text import Text


def format_duration(seconds: float | None) -> str:
    """1:02:03, 2:03 or 45 s; "-" when unknown."""
    if seconds is None:
        return "-"
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    if minutes:
        return f"{minutes}:{secs:02d}"
    return f"{secs} s"


def format_count(value: float | None) -> str:
    """1520.4 -> 1.52k; "-" when unknown."""
    if value is None:
        return "-"
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}"


def format_bytes(value: float | None) -> str:
    if value is None:
        return "-"
    for limit, suffix in ((2**40, "T"), (2**30, "G"), (2**20, "M"), (2**10, "K")):
        if value >= limit:
            return f"{value / limit:.1f}{suffix}"
    return f"{value:.0f}B"


def format_loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def literal(value: object, style: str = "") -> Text:
    """`value` as text shown exactly as it is. Rich and Textual read a plain `str` as markup
    (and Rich as :emoji: codes): a run's error `[/__w/.../pair.cc:537] Read error` would raise
    MarkupError, a sample's `[red]` would turn red. Everything that comes from the run's files
    (errors, alert messages, samples, hosts, models, run ids, paths) goes through here, or is
    appended to a `Text` (which never parses markup); plain `str` is left to the dashboard's
    own markup."""
    return Text(str(value), style=style, end="")


def middle_truncate(text: str, width: int) -> str:
    """`20261125…gpt2-medium`: both ends of a name, where runs tend to differ."""
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head):]


def fit_widths(rows: list[tuple[str, ...]], width: int, flexible: int = 0, least: int = 12) -> list[int]:
    """Each column's width, its longest cell, one space between columns; the `flexible` column
    (the names) gives way, down to `least`, so that a row fits in `width`."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    others = sum(widths) - widths[flexible] + len(widths) - 1
    widths[flexible] = max(least, min(widths[flexible], width - others))
    return widths


def cell(text: str, width: int, right: bool = False) -> Text:
    """A table cell of exactly `width`: the text as is (never markup), cut with an ellipsis,
    numbers (`right`) aligned right."""
    shown = literal(text)
    shown.truncate(width, overflow="ellipsis")
    shown.align("right" if right else "left", width)
    return shown
