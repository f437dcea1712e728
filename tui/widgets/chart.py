"""Line charts against step, drawn with braille dots (2x4 dots per cell), and the loss panel:
train and validation loss.

Hand-drawn rather than textual-plotext (which pins plotext<6): a line chart is a few dozen
lines. Points are first reduced to one vertical span per dot column, so the cost of a redraw
depends on the chart's size, not on the number of points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rich.text import Text
from textual.widget import Widget

from tui.format import format_loss
from tui.state import RunState
from tui.widgets.base import FollowsState

# Bit of each dot in a braille cell, indexed [row][column] (Unicode braille patterns, U+2800).
BRAILLE_BITS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))
Y_LABEL_WIDTH = 7
EMA_WEIGHT = 0.9  # as TensorBoard's smoothing slider: each point keeps 90% of the previous


@dataclass
class Line:
    steps: list[float]
    values: list[float]
    style: str
    # An interval at each point (a 95% CI), drawn as a dim vertical bar under the line.
    intervals: list[tuple[float, float] | None] | None = None


def ema(values: list[float], weight: float = EMA_WEIGHT) -> list[float]:
    """Exponential moving average, debiased so that the first points are not pulled to 0
    (as TensorBoard's smoothing)."""
    smoothed, average = [], 0.0
    for i, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        smoothed.append(average / (1 - weight**i))
    return smoothed


def draw_chart(lines: list[Line], width: int, height: int, log_y: bool = False,
               empty: str = "waiting for the first step",
               x_range: tuple[float, float] | None = None) -> list[Text]:
    """`height` rows of `width` cells: a y axis, the plot and a row of step labels. The steps
    span `x_range` when given (charts side by side share it), else the lines' own."""
    plot_w, plot_h = width - Y_LABEL_WIDTH, height - 1
    if plot_w < 4 or plot_h < 1:
        return [Text("") for _ in range(max(height, 0))]
    transform = (lambda v: math.log10(v)) if log_y else (lambda v: v)
    points = [[(s, transform(v)) for s, v in zip(line.steps, line.values) if v > 0 or not log_y]
              for line in lines]
    bars: list[list[tuple[float, float, float]]] = []  # (step, low, high) per line
    for line in lines:
        intervals = zip(line.steps, line.intervals or [])
        bars.append([(s, transform(i[0]), transform(i[1])) for s, i in intervals
                     if i is not None and (i[0] > 0 or not log_y)])
    everything = [p for line_points in points for p in line_points]
    if not everything:
        return [Text(empty, style="dim")] + [Text("")] * (height - 1)
    x_lo, x_hi = x_range or (min(p[0] for p in everything), max(p[0] for p in everything))
    bounds = [p[1] for p in everything]
    bounds += [y for line_bars in bars for _, lo, hi in line_bars for y in (lo, hi)]
    y_lo, y_hi = min(bounds), max(bounds)
    if y_hi - y_lo < 1e-9:
        y_lo, y_hi = y_lo - 0.5, y_hi + 0.5
    x_span = max(x_hi - x_lo, 1e-9)
    dots_w, dots_h = plot_w * 2, plot_h * 4
    bits = [[0] * plot_w for _ in range(plot_h)]
    styles: list[list[str | None]] = [[None] * plot_w for _ in range(plot_h)]

    def dot(x: int, y: int, style: str) -> None:
        row, col = y // 4, x // 2
        bits[row][col] |= BRAILLE_BITS[y % 4][x % 2]
        styles[row][col] = style

    def dot_x(s: float) -> int:
        return max(0, min(dots_w - 1, int((s - x_lo) / x_span * (dots_w - 1) + 0.5)))

    def dot_y(v: float) -> int:
        return max(0, min(dots_h - 1, int((y_hi - v) / (y_hi - y_lo) * (dots_h - 1) + 0.5)))

    for line, line_bars in zip(lines, bars):  # under every line
        for s, lo, hi in line_bars:
            for y in range(dot_y(hi), dot_y(lo) + 1):
                dot(dot_x(s), y, f"dim {line.style}")
    for line, line_points in zip(lines, points):
        # One (first, last, low, high) span of dot rows per dot column.
        columns: dict[int, list[int]] = {}
        for s, v in line_points:
            x, y = dot_x(s), dot_y(v)
            span = columns.get(x)
            if span is None:
                columns[x] = [y, y, y, y]
            else:
                span[1] = y
                span[2], span[3] = min(span[2], y), max(span[3], y)
        previous = None
        for x in sorted(columns):
            first, last, low, high = columns[x]
            if previous is not None:  # join to the previous column with a straight line
                px, py = previous
                n = max(x - px, abs(first - py))
                for i in range(1, n):
                    dot(px + round((x - px) * i / n), py + round((first - py) * i / n), line.style)
            for y in range(low, high + 1):
                dot(x, y, line.style)
            previous = (x, last)

    def y_label(v: float) -> str:
        return f"{10**v if log_y else v:.3g}".rjust(Y_LABEL_WIDTH - 1) + " "

    labelled_rows = {0: y_label(y_hi), plot_h - 1: y_label(y_lo)}
    if plot_h >= 5:
        labelled_rows[(plot_h - 1) // 2] = y_label((y_hi + y_lo) / 2)
    rows = []
    for r in range(plot_h):
        text = Text()
        text.append(labelled_rows.get(r, " " * Y_LABEL_WIDTH), style="dim")  # not the lines
        for c in range(plot_w):
            text.append(chr(0x2800 + bits[r][c]), style=styles[r][c] or "")
        rows.append(text)
    left, right = f"{x_lo:.0f}", f"step {x_hi:.0f}"
    gap = max(1, plot_w - len(left) - len(right))
    rows.append(Text(" " * Y_LABEL_WIDTH + left + " " * gap + right, style="dim"))
    return rows


class LossChart(FollowsState, Widget):
    """Loss panel: a legend line with the latest values, then the chart; the best validation
    loss (and a completed run's final one) in the bottom border."""

    DEFAULT_CSS = "LossChart { height: 1fr; }"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.smooth = False
        self.log_y = False
        self.train = Line([], [], "cyan")
        self.val = Line([], [], "magenta")
        self.last_train: float | None = None
        self.last_val: float | None = None

    def show(self, state: RunState) -> None:
        if not self.stale(state):
            return
        train, val = state.series["loss"], state.series["val_loss"]
        train_points, val_points = train.points(), val.points()
        self.train = Line([b.step for b in train_points], [b.value for b in train_points], "cyan")
        self.val = Line([b.step for b in val_points], [b.value for b in val_points], "magenta")
        self.last_train, self.last_val = train.last, val.last
        best, final = state.best_val(), state.final_val()
        notes = [f"best val {format_loss(best[0])} @{best[1]:.0f}"] if best else []
        notes += [f"final val {format_loss(final)}"] if final is not None else []
        self.border_subtitle = "  ".join(notes)
        self.refresh()

    def render(self) -> Text:
        train = self.train
        if self.smooth and train.values:
            train = Line(train.steps, ema(train.values), train.style)
        legend = Text()
        legend.append("━ train ", style="cyan")
        legend.append(format_loss(self.last_train))
        if self.smooth and train.values:
            legend.append(f" (ema {format_loss(train.values[-1])})", style="dim")
        legend.append("  ━ val ", style="magenta")
        legend.append(format_loss(self.last_val))
        legend.truncate(self.size.width)
        rows = [legend] + draw_chart([train, self.val], self.size.width, self.size.height - 1, self.log_y)
        return Text("\n").join(rows)
