"""The runs list: the runs under a directory, newest first or sorted by any column; enter opens
one, space selects runs and `c` compares them. Fits 80 columns: the run names give way (cut in
the middle, the full name of the run under the cursor below the table)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Static

from tui.compare import CompareScreen
from tui.dashboard import DashboardConfig, DashboardScreen
from tui.format import cell, fit_widths, literal, middle_truncate
from tui.runs import COLUMNS, RunSummary, list_runs, sort_runs
from tui.widgets import StatusBar

SELECTED, UNSELECTED = "● ", "  "  # before a run's name
MIN_RUN_WIDTH = 14
SCROLLBAR = 2  # cells the table's vertical scrollbar takes when the runs overflow it
TABLE_MARGIN = 4  # rows of the screen that are not runs: title, header, detail, keys
SORT_MARKS = {False: " ▲", True: " ▼"}


class RunsScreen(Screen):
    BINDINGS = [
        Binding("r", "reload", "reload"),
        Binding("space", "toggle_select", "select"),
        Binding("c", "compare", "compare"),
        *(Binding(str(i + 1), f"sort({i})", show=False) for i in range(len(COLUMNS))),
    ]
    KEYS = (("enter", "open"), ("space", "select"), ("c", "compare"), (f"1-{len(COLUMNS)}", "sort"),
            ("r", "reload"), ("?", "help"), ("q", "quit"))
    HELP = """\
[b]↑ ↓[/b]    move through the runs
[b]enter[/b]  open the run (escape comes back)
[b]space[/b]  select the run, or unselect it
[b]c[/b]      compare the selected runs (two or more)
[b]r[/b]      read the runs again
[b]q[/b]      quit          [b]?[/b] this help (any key closes it)

Sort by a column (the same key again: reverse):
""" + "\n".join(f"[b]{i + 1}[/b] {column.title:<11}{column.meaning}" for i, column in enumerate(COLUMNS))

    def __init__(self, root: Path, config: DashboardConfig, clock: Callable[[], float]):
        super().__init__()
        self.root = root
        self.config = config
        self.clock = clock
        self.summaries: list[RunSummary] = []  # in the order shown
        self.selected: list[Path] = []  # in the order selected
        self.sort: tuple[int, bool] | None = None  # (column, reverse); None: newest first

    def compose(self) -> ComposeResult:
        yield Static(literal(f"runs in {self.root}", style="bold"), id="runs-title")  # a path may hold [ ]
        yield DataTable(id="runs", cursor_type="row", cell_padding=0)
        yield Static(id="runs-detail")
        yield StatusBar(self.KEYS, id="runs-keys")

    def on_mount(self) -> None:
        self.action_reload()

    def action_reload(self) -> None:
        self.run_worker(self.read_runs, thread=True, exclusive=True, name="runs")

    def read_runs(self) -> None:
        """In a worker thread: the listing reads a little of every run's files."""
        summaries = list_runs(self.root, self.clock(), self.config.thresholds)
        self.app.call_from_thread(self.show_runs, summaries)

    def show_runs(self, summaries: list[RunSummary]) -> None:
        known = {summary.path for summary in summaries}
        self.selected = [path for path in self.selected if path in known]
        self.summaries = summaries
        self.fill_table()
        self.query_one(DataTable).focus()

    def on_resize(self) -> None:
        if self.summaries:
            self.fill_table()

    def fill_table(self) -> None:
        """(Re)build the table at this width, keeping the cursor on its run."""
        table = self.query_one(DataTable)
        current = self.current()
        self.summaries = sort_runs(self.summaries, *(self.sort or (None,)))
        titles = [column.title + (SORT_MARKS[self.sort[1]] if self.sort and self.sort[0] == i else "")
                  for i, column in enumerate(COLUMNS)]
        titles[0] = UNSELECTED + titles[0]  # above the names, after their marks
        rows = [((SELECTED if summary.path in self.selected else UNSELECTED) + cells[0], *cells[1:])
                for summary, cells in ((summary, summary.cells()) for summary in self.summaries)]
        # Every column one cell wider than its text (the space between columns, and after the
        # last); a vertical scrollbar when the runs overflow the table.
        scrollbar = SCROLLBAR if len(rows) > self.size.height - TABLE_MARGIN else 0
        widths = fit_widths([tuple(titles), *rows], self.size.width - 1 - scrollbar, least=MIN_RUN_WIDTH)
        table.clear(columns=True)
        for column, title, width in zip(COLUMNS, titles, widths):
            table.add_column(cell(title, width, column.numeric), width=width + 1)
        for summary, row in zip(self.summaries, rows):
            mark, name = row[0][: len(SELECTED)], row[0][len(SELECTED):]
            cells = (mark + middle_truncate(name, widths[0] - len(mark)), *row[1:])
            table.add_row(*(cell(text, width, column.numeric)
                            for text, column, width in zip(cells, COLUMNS, widths)), key=str(summary.path))
        if current is not None:
            table.move_cursor(row=self.summaries.index(current))
        self.show_detail()

    def current(self) -> RunSummary | None:
        """The run under the cursor."""
        table = self.query_one(DataTable)
        if not self.summaries or not 0 <= table.cursor_row < len(self.summaries):
            return None
        return self.summaries[table.cursor_row]

    def show_detail(self, note: str = "") -> None:
        """Below the table: the run under the cursor, whole; or a note."""
        summary = self.current()
        detail = Text(note, style="yellow") if note else literal(summary.name if summary else "no runs")
        self.query_one("#runs-detail", Static).update(detail)
        selected = f" {len(self.selected)} selected " if self.selected else ""
        self.query_one(StatusBar).show(Text(selected, style="bold"))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.show_detail()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        path = self.summaries[event.cursor_row].path
        self.app.push_screen(DashboardScreen(path, self.config, self.clock))

    def action_toggle_select(self) -> None:
        summary = self.current()
        if summary is None:
            return
        if summary.path in self.selected:
            self.selected.remove(summary.path)
        else:
            self.selected.append(summary.path)
        self.fill_table()

    def action_sort(self, column: int) -> None:
        """By `column`; the same column again reverses the order."""
        reverse = self.sort is not None and self.sort == (column, False)
        self.sort = (column, reverse)
        self.fill_table()

    def action_compare(self) -> None:
        if len(self.selected) < 2:
            self.show_detail("select two or more runs with space, then press c")
            return
        self.app.push_screen(CompareScreen(list(self.selected), self.config, self.clock))
