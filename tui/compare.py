"""Runs side by side: their validation (or train) loss and judge mean scores overlaid against
step, each run in its own colour with a legend, and the config keys that differ between them
(config.json's `config`). The runs are followed as the dashboard follows one, so a run still
going can be compared with finished ones."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widget import Widget
from textual.widgets import Static

from tui.dashboard import DashboardConfig, FollowingScreen
from tui.format import cell, fit_widths, literal, middle_truncate
from tui.runs import COLUMNS, RunSummary, config_differences, read_config
from tui.widgets import StatusBar
from tui.widgets.chart import Line, draw_chart, ema

PALETTE = ("cyan", "magenta", "yellow", "green", "red", "blue", "bright_white", "orange1")


def run_style(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


# The runs list's columns that the legend repeats, after each run's colour and number.
LEGEND_COLUMNS = tuple(column for column in COLUMNS
                       if column.title in ("run", "status", "val", "judge", "tuned−base"))


def legend(summaries: list[RunSummary], width: int) -> Text:
    """Which colour is which run, with the runs list's figures (`-` until a run has them)."""
    titles = ("", *(column.title for column in LEGEND_COLUMNS))
    rows = []
    for summary in summaries:
        cells = dict(zip((column.title for column in COLUMNS), summary.cells()))
        rows.append((f"━ {len(rows) + 1}", *(cells[column.title] for column in LEGEND_COLUMNS)))
    widths = fit_widths([titles, *rows], width, flexible=1)
    numeric = (False, *(column.numeric for column in LEGEND_COLUMNS))
    lines = [Text(" ").join(cell(title, w, right) for title, w, right in zip(titles, widths, numeric))]
    lines[0].stylize("bold")
    for i, row in enumerate(rows):
        row = (row[0], middle_truncate(row[1], widths[1]), *row[2:])
        line = Text(" ").join(cell(text, w, right) for text, w, right in zip(row, widths, numeric))
        line.stylize(run_style(i), 0, len(row[0]))
        lines.append(line)
    return Text("\n").join(lines)


class RunsChart(Widget):
    """Lines of several runs overlaid, drawn to the widget's size."""

    DEFAULT_CSS = "RunsChart { height: 1fr; width: 1fr; }"

    def __init__(self, empty: str, **kwargs):
        super().__init__(**kwargs)
        self.empty = empty
        self.lines: list[Line] = []

    def show(self, lines: list[Line]) -> None:
        self.lines = lines
        self.refresh()

    def render(self) -> Text:
        return Text("\n").join(draw_chart(self.lines, self.size.width, self.size.height, empty=self.empty))


def config_table(names: list[str], configs: list[dict | str] | None) -> Table | Text:
    """The keys that differ, a column per run (numbered as in the legend); and the runs whose
    config cannot be read."""
    if configs is None:
        return Text("reading config.json…", style="dim")
    text = Text()
    for i, config in enumerate(configs):
        if isinstance(config, str):
            text.append(f"{i + 1} ", style=f"bold {run_style(i)}")
            text.append_text(literal(f"{names[i]}: {config}\n"))
    rows = config_differences(configs)
    if not rows:
        text.append("no config key differs between the runs" if sum(isinstance(c, dict) for c in configs) > 1
                    else "fewer than two configs to compare", style="dim")
        return text
    table = Table(box=None, padding=(0, 2), pad_edge=False, header_style="bold")
    table.add_column("config key", no_wrap=True, overflow="ellipsis")
    for i in range(len(configs)):
        table.add_column(Text(str(i + 1), style=f"bold {run_style(i)}"), no_wrap=True, overflow="ellipsis")
    for key, values in rows:
        table.add_row(literal(key), *map(literal, values))
    if text.plain:
        text.rstrip()
        grid = Table.grid()
        grid.add_row(text)
        grid.add_row(table)
        return grid
    return table


class CompareScreen(FollowingScreen):
    BINDINGS = [Binding("t", "toggle_train", "train/val loss")]
    KEYS = (("t", "train/val loss"), ("escape", "back"), ("?", "help"), ("q", "quit"))
    HELP = """\
Runs side by side, each in its colour and numbered as in the legend.

[b]t[/b]      train loss (EMA, weight 0.9) / validation loss
[b]↑ ↓[/b]    scroll the config differences
[b]escape[/b] back to the runs list
[b]q[/b]      quit          [b]?[/b] this help (any key closes it)

Left: the loss against step; right: each judged evaluation's mean score. Below: the \
keys of config.json's `config` whose values differ between the runs ("-": missing)."""

    def __init__(self, paths: list[Path], config: DashboardConfig, clock: Callable[[], float]):
        super().__init__(paths, config, clock)
        self.configs: list[dict | str] | None = None
        self.train = False

    def compose(self) -> ComposeResult:
        yield Static(Text(f"comparing {len(self.runs)} runs", style="bold"), id="compare-title")
        yield Static(id="legend")
        with Horizontal(id="compare-charts"):
            yield RunsChart("no validation loss yet", id="compare-loss")
            yield RunsChart("no judged evaluation", id="compare-judge")
        yield VerticalScroll(Static(id="config-diff"), id="config-panel")
        yield StatusBar(self.KEYS, id="compare-keys")

    def on_mount(self) -> None:
        self.query_one("#compare-judge").border_title = "Judge mean score"
        self.query_one("#config-panel").border_title = "Config differences"
        self.update_loss_title()
        self.show_configs()
        self.query_one("#config-panel").focus()
        self.run_worker(self.read_configs, thread=True, name="configs")

    def read_configs(self) -> None:
        """In a worker thread: the config.json of each run."""
        configs = [read_config(run.path) for run in self.runs]
        self.app.call_from_thread(self.show_configs, configs)

    def show_configs(self, configs: list[dict | str] | None = None) -> None:
        self.configs = configs
        names = [run.path.name for run in self.runs]
        self.query_one("#config-diff", Static).update(config_table(names, configs))

    def redraw(self) -> None:
        if not self.polls:
            return
        now = self.clock()
        with self.lock:
            summaries = [RunSummary.of(run.path, run.state, now, last_write=now) for run in self.runs]
            losses, scores = [], []
            for i, run in enumerate(self.runs):
                points = run.state.series["loss" if self.train else "val_loss"].points()
                values = [b.value for b in points]
                steps = [b.step for b in points]
                losses.append(Line(steps, ema(values) if self.train else values, run_style(i)))
                judged = run.state.eval_scores()
                means = [score.mean for _, score in judged]
                scores.append(Line([step for step, _ in judged], means, run_style(i)))
        legend_widget = self.query_one("#legend", Static)
        legend_widget.update(legend(summaries, legend_widget.content_size.width))
        self.query_one("#compare-loss", RunsChart).show(losses)
        self.query_one("#compare-judge", RunsChart).show(scores)

    def action_toggle_train(self) -> None:
        self.train = not self.train
        self.update_loss_title()
        self.redraw()

    def update_loss_title(self) -> None:
        self.query_one("#compare-loss").border_title = "Train loss (ema)" if self.train else "Validation loss"
