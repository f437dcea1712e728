"""Throughput panel: tokens/s, samples/s, MFU, learning rate and grad norm, each with its
current value and a sparkline of its history (the downsampled series, over the whole run)."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from tui.format import format_count
from tui.fields import number
from tui.state import RunState
from tui.widgets.base import FollowsState

SPARK_LEVELS = "▁▂▃▄▅▆▇█"
THROUGHPUT_ROWS = (  # (series name, label, format of the current value)
    ("tokens_per_s", "tokens/s", format_count),
    ("samples_per_s", "samples/s", format_count),
    ("mfu", "MFU", lambda v: "-" if v is None else f"{v * 100:.1f}%"),
    ("lr", "lr", lambda v: "-" if v is None else f"{v:.2e}"),
    ("grad_norm", "grad norm", format_count),
)
LABEL_WIDTH, VALUE_WIDTH = 9, 8


def sparkline(values: list[float], width: int) -> str:
    """`values` averaged into `width` columns, each drawn as one of eight block heights."""
    if not values or width <= 0:
        return ""
    if len(values) > width:
        columns = []
        for c in range(width):
            chunk = values[c * len(values) // width : (c + 1) * len(values) // width]
            columns.append(sum(chunk) / len(chunk))
    else:
        columns = values
    low, high = min(columns), max(columns)
    span = high - low
    if span <= 0:
        return SPARK_LEVELS[len(SPARK_LEVELS) // 2 - 1] * len(columns)
    top = len(SPARK_LEVELS) - 1
    return "".join(SPARK_LEVELS[round((v - low) / span * top)] for v in columns)


class ThroughputPanel(FollowsState, Widget):
    DEFAULT_CSS = "ThroughputPanel { height: 1fr; }"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.rows: list[tuple[str, float | None, list[float], object]] = []
        self.tokens_total: float | None = None

    def show(self, state: RunState) -> None:
        if not self.stale(state):
            return
        self.rows = [(label, state.series[name].last, [b.value for b in state.series[name].points()], fmt)
                     for name, label, fmt in THROUGHPUT_ROWS]
        last = state.run_end or state.last_train or {}
        self.tokens_total = number(last, "tokens_total")
        self.refresh()

    def render(self) -> Text:
        spark_width = self.size.width - LABEL_WIDTH - VALUE_WIDTH - 1
        text = Text()
        for label, value, history, fmt in self.rows:
            text.append(label.ljust(LABEL_WIDTH), style="dim")
            text.append(fmt(value).rjust(VALUE_WIDTH) + " ", style="bold")
            text.append(sparkline(history, spark_width) + "\n", style="green")
        text.append("tokens".ljust(LABEL_WIDTH), style="dim")
        text.append(format_count(self.tokens_total).rjust(VALUE_WIDTH), style="bold")
        return text
