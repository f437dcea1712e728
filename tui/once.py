"""`python -m tui RUN_DIR --once`: the dashboard's content as plain text, for scripts, logs and
cron. Same status words as the app (waiting, running, stalled, completed, interrupted, failed).
"""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console, RenderableType
from rich.table import Table

from tui.follow import RunFollower
from tui.format import format_loss, literal
from tui.runs import COLUMNS, RunSummary
from tui.fields import text_field
from tui.state import RunState, Thresholds
from tui.widgets.events import events_text
from tui.widgets.judge import evals_text, final_text, judge_text, listed_summaries
from tui.widgets.ranks import ranks_table
from tui.widgets.samples import samples_text
from tui.widgets.throughput import THROUGHPUT_ROWS

WIDTH = 100
LISTING_WIDTH = 1000  # never wrap or cut a row of the runs list
LAST_EVENTS = 8


def read_run(run_dir: Path, thresholds: Thresholds, now: float) -> RunState:
    """Read every file of the run once (a first look: the files are dated by their mtimes)."""
    follower = RunFollower(run_dir, clock=lambda: now)
    state = RunState(thresholds)
    while True:
        poll = follower.poll()
        state.apply_poll(poll, now)
        if not poll.more:
            break
    return state


def render_text(renderables: list[RenderableType], width: int = WIDTH) -> str:
    """Plain text: a `str` here (and in a table's cells) is printed as is, never read as markup or
    emoji codes, since it carries what the run wrote (its error, alerts, hosts, model)."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, highlight=False, soft_wrap=False,
                      markup=False, emoji=False)
    for renderable in renderables:
        console.print(literal(renderable) if isinstance(renderable, str) else renderable)
    return "".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines())


def run_summary(state: RunState, name: str, now: float) -> str:
    total, step, best, series = state.total_steps(), state.step(), state.best_val(), state.series
    percent = f" ({100 * step / total:.0f}%)" if total else ""
    lines = [
        f"run       {name}  {state.describe()}".rstrip(),
        f"status    {state.status(now)}",
        f"step      {step}/{total or '?'}{percent}  {state.timing()}",
        f"loss      train {format_loss(series['loss'].last)}  val {format_loss(series['val_loss'].last)}"
        + (f"  best val {format_loss(best[0])} @{best[1]:.0f}" if best else "")
        + (f"  final val {format_loss(state.final_val())}" if state.final_val() is not None else ""),
        "speed     " + "  ".join(f"{label} {fmt(series[name].last)}" for name, label, fmt in THROUGHPUT_ROWS),
    ]
    end = state.run_end or {}
    if text_field(end, "error"):
        lines.append(f"error     {text_field(end, 'error')}")
    alert = state.alert[0] if state.alert else None
    if alert:
        lines.append(f"alert     {alert}")
    skipped = state.skipped()
    if skipped.corrupt:
        lines.append(f"corrupt   {skipped.corrupt} lines skipped")
    if skipped.unknown_version:
        lines.append(f"unknown v {skipped.unknown_version} lines of an unknown schema version skipped")
    scores, pending, final = state.eval_scores(), state.judge_pending(), state.final_judge()
    if scores or pending or final or state.judge_start:
        lines.append(f"judge     {evals_text(scores, pending).plain}")
        lines.append(f"          {final_text(final, state.judge_start).plain}")
        if final is not None and final.command:
            lines.append(f"          finish it with: {final.command}")
    renderables: list[RenderableType] = ["\n".join(lines), "\nranks"]
    renderables.append(ranks_table(state.rank_rows(now), WIDTH))
    renderables += [f"\nevents (last {LAST_EVENTS})", events_text(list(state.log)[-LAST_EVENTS:])]
    if state.samples:
        renderables += ["\nlatest sample", samples_text(state.sample_prompt, list(state.samples)[-1:])]
    if scores:
        renderables.append(f"\njudged evaluations (last {LAST_EVENTS})")
        renderables += [f"  step {step:>6}  {score.text()}" for step, score in scores[-LAST_EVENTS:]]
    if listed_summaries(state.judge):
        renderables += ["\njudge", judge_text(listed_summaries(state.judge))]
    return render_text(renderables)


def runs_listing(summaries: list[RunSummary]) -> str:
    """The runs list's table, as wide as it needs: scripts read whole names."""
    table = Table(box=None, padding=(0, 2), pad_edge=False, header_style="bold")
    for column in COLUMNS:
        table.add_column(column.title, no_wrap=True, justify="right" if column.numeric else "left")
    for summary in summaries:
        table.add_row(*map(literal, summary.cells()))
    return render_text([table if summaries else "no runs"], width=LISTING_WIDTH)
