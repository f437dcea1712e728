"""Events panel: run starts and resumes, checkpoints, alerts, stragglers and the end, oldest
first; times are since the attempt's run_start on the writer's clock."""

from __future__ import annotations

from rich.text import Text

from tui.format import format_duration
from tui.state import LogLine, RunState
from tui.widgets.base import TextPanel

KIND_STYLES = {"alert": "bold red", "straggler": "bold red", "checkpoint": "green",
               "run_end": "bold", "run_start": "cyan"}


def events_text(lines: list[LogLine]) -> Text:
    if not lines:
        return Text("no events yet", style="dim")
    text = Text()
    for line in lines:
        when = f"+{format_duration(line.since_start_s)}" if line.since_start_s is not None else ""
        step = f"s{line.step}" if line.step is not None else ""
        text.append(f"{when:>9} {step:>6} ", style="dim")
        text.append(line.text + "\n", style=KIND_STYLES.get(line.kind, ""))
    text.rstrip()
    return text


class EventsPanel(TextPanel):
    def text(self, state: RunState) -> Text:
        return events_text(list(state.log))
