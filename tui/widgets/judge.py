"""Judge panel: for each `*.summary.json` in the run directory (docs/judge.md), each scored
key's mean, 95% CI and counts, and its 10-bin histogram of scores."""

from __future__ import annotations

from rich.text import Text

from tui.state import RunState
from tui.widgets.base import TextPanel

EIGHTHS = " ▁▂▃▄▅▆▇█"
BAR_ROWS = 3  # histogram height in rows (each row 8 levels)


def histogram_rows(counts: list[int]) -> list[str]:
    """Vertical bars, three cells wide, BAR_ROWS rows tall, tallest bin full height."""
    top = max(counts) if counts and max(counts) > 0 else 1
    levels = [round(c / top * BAR_ROWS * 8) for c in counts]
    rows = []
    for row in range(BAR_ROWS - 1, -1, -1):
        cells = []
        for level in levels:
            fill = min(8, max(0, level - row * 8))
            cells.append(EIGHTHS[fill] * 2 + " ")
        rows.append("".join(cells))
    return rows


def judge_text(judge: dict[str, dict | str]) -> Text:
    if not judge:
        return Text("no judge summary (*.summary.json) in the run directory", style="dim")
    text = Text()
    for name, summary in judge.items():
        text.append(name + "\n", style="bold")
        if isinstance(summary, str):
            text.append(f"  {summary}\n", style="red")
            continue
        judge_info = summary.get("judge") or {}
        text.append(f"judge {judge_info.get('model', '?')} ({judge_info.get('api', '?')})\n", style="dim")
        for key, stats in (summary.get("keys") or {}).items():
            mean, ci = stats.get("mean"), stats.get("ci95")
            text.append(f"{key}  ", style="cyan")
            text.append(f"mean {mean:.2f}" if isinstance(mean, (int, float)) else "mean -", style="bold")
            if isinstance(ci, list) and len(ci) == 2:
                text.append(f"  95% CI [{ci[0]:.1f}, {ci[1]:.1f}]")
            text.append(f"\n  scored {stats.get('scored', '?')}/{stats.get('total', '?')}"
                        f"  failed {stats.get('failed', '?')}  unparseable {stats.get('unparseable', '?')}\n")
            counts = (stats.get("histogram") or {}).get("counts")
            if isinstance(counts, list) and all(isinstance(c, int) for c in counts):
                for row in histogram_rows(counts):
                    text.append("  " + row + "\n", style="green")
                text.append("  " + "".join(f"{10 * i:<3}" for i in range(len(counts))) + "\n", style="dim")
    text.rstrip()
    return text


class JudgePanel(TextPanel):
    def text(self, state: RunState) -> Text:
        return judge_text(state.judge)
