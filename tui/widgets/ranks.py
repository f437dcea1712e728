"""Ranks panel: one row per rank, stragglers highlighted (see RunState.rank_rows for the rules)."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from tui.format import format_bytes, format_duration, format_percent, literal
from tui.state import WAITING_PREFIX, RankRow, RunState

WIDE = 100  # from this width on, a column says why a rank is a straggler


def phase_label(phase: str) -> str:
    """`wait_export` reads `waiting: export`."""
    if phase.startswith(WAITING_PREFIX):
        return f"waiting: {phase[len(WAITING_PREFIX):]}"
    return phase


def ranks_table(rows: list[RankRow], width: int) -> Table | Text:
    if not rows:
        return Text("no heartbeats yet (ranks/rank-<N>.jsonl)", style="dim")
    gpu = any(row.gpu_util_percent is not None for row in rows)
    table = Table(box=None, padding=(0, 1), pad_edge=False, expand=True, header_style="bold dim")
    for name, justify in (("rank", "right"), ("host", "left"), ("phase", "left"), ("for", "right"),
                          ("step", "right"), ("behind", "right"), ("heard", "right"),
                          ("gpu" if gpu else "cpu", "right"), ("mem", "right")):
        table.add_column(name, justify=justify, no_wrap=True, overflow="ellipsis")
    if width >= WIDE:
        table.add_column("straggler", no_wrap=True, overflow="ellipsis", ratio=1)
    for row in rows:
        if gpu:
            util = format_percent(row.gpu_util_percent)
            mem = f"{format_bytes(row.gpu_mem_used_bytes)}/{format_bytes(row.gpu_mem_total_bytes)}"
        else:
            util, mem = format_percent(row.cpu_percent), format_bytes(row.rss_bytes)
        cells = [str(row.rank), row.host, phase_label(row.phase), format_duration(row.phase_for_s),
                 str(row.step), str(row.steps_behind), format_duration(row.since_heard_s), util, mem]
        if width >= WIDE:
            cells.append(row.straggler or "")  # names the phase, which the rank wrote
        table.add_row(*map(literal, cells), style="bold white on dark_red" if row.straggler else None)
    return table


class RanksPanel(Static):
    def show(self, state: RunState, now: float) -> None:
        self.update(ranks_table(state.rank_rows(now), self.size.width))
