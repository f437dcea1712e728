"""Judge panel: quality against step and the final verdict. Each judged evaluation's mean score
with its 95% CI, charted beside the validation loss over the same steps; the test responses'
mean, the base model's and tuned minus base; then each judge summary in the run directory
(docs/judge.md) with its counts and histogram of scores."""

from __future__ import annotations

from rich.text import Text
from textual.geometry import Size
from textual.widget import Widget

from tui.quality import EVAL_SUMMARY, Estimate, FinalJudge, judge_label
from tui.state import RunState
from tui.widgets.base import FollowsState
from tui.widgets.chart import Line, draw_chart

EIGHTHS = " ▁▂▃▄▅▆▇█"
BAR_ROWS = 3  # histogram height in rows (each row 8 levels)
CHART_ROWS = 6  # a legend, the plot and the steps
SIDE_BY_SIDE_WIDTH = 60  # narrower, the two charts go one above the other
JUDGE_STYLE, VAL_STYLE = "green", "magenta"


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
    """Each summary: each scored key's mean, CI, counts and histogram (or why unreadable)."""
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


def listed_summaries(judge: dict[str, dict | str]) -> dict[str, dict | str]:
    """The summaries to list one by one: the evaluations' are charted instead, unless they
    cannot be read."""
    return {name: summary for name, summary in judge.items()
            if not EVAL_SUMMARY.fullmatch(name) or isinstance(summary, str)}


def evals_text(scores: list[tuple[int, Estimate]], pending: int) -> Text:
    """`judged evals 3 (1 waiting)  step 120: 51.75 [47.2, 56.3]`."""
    if not scores and not pending:
        return Text("no judged evaluation (--judge-samples K, then python -m judge follow)", style="dim")
    text = Text(f"judged evals {len(scores)}", style="bold")
    if pending:
        text.append(f" ({pending} waiting for the judge)", style="dim")
    if scores:
        step, score = scores[-1]
        text.append(f"  step {step}: ")
        text.append(score.text(), style=f"bold {JUDGE_STYLE}")
    return text


def final_text(final: FinalJudge | None, judge_start: dict | None) -> Text:
    """The judge's verdict on the test responses, or what it is doing."""
    if final is None:
        if judge_start is not None:
            return Text(f"judging the test responses with {judge_label(judge_start)}…", style="yellow")
        return Text("no judge of the test responses yet", style="dim")
    if final.tuned is None:
        text = Text("judge failed", style="bold red")
        return text.append(f": {final.error}" if final.error else "")
    text = Text("final ", style="bold")
    text.append(final.tuned.text(), style=f"bold {JUDGE_STYLE}")
    if final.base is not None:
        text.append(f"  base {final.base.mean:.2f}")
    if final.difference is not None:
        text.append("  tuned − base ")
        text.append(final.difference.text(signed=True), style="bold")
    return text


class JudgePanel(FollowsState, Widget):
    DEFAULT_CSS = "JudgePanel { height: auto; }"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.scores: list[tuple[int, Estimate]] = []
        self.val = Line([], [], VAL_STYLE)
        self.head: list[Text] = []
        self.details = Text("")
        self.height_shown = 0

    def show(self, state: RunState) -> None:
        if not self.stale(state):
            return
        self.scores = state.eval_scores()
        points = state.series["val_loss"].points()
        self.val = Line([b.step for b in points], [b.value for b in points], VAL_STYLE)
        final = state.final_judge()
        self.head = [evals_text(self.scores, state.judge_pending()), final_text(final, state.judge_start)]
        if final is not None and final.command:
            self.head.append(Text("finish it with: ", style="dim").append(final.command))
        listed = listed_summaries(state.judge)
        self.details = judge_text(listed) if listed else Text("")
        height = self.line_count(self.size.width)
        self.refresh(layout=height != self.height_shown)  # a layout pass only when it grew or shrank
        self.height_shown = height

    def line_count(self, width: int) -> int:
        charts = 0 if not self.scores else CHART_ROWS if width >= SIDE_BY_SIDE_WIDTH else 2 * CHART_ROWS
        return len(self.head) + charts + len(self.details.plain.splitlines())

    def rows(self, width: int) -> list[Text]:
        rows = [row.copy() for row in self.head]  # truncated to this width below
        if self.scores:
            rows += self.charts(width)
        if self.details.plain:
            rows += self.details.split("\n")
        for row in rows:
            row.truncate(width, overflow="ellipsis")
        return rows

    def charts(self, width: int) -> list[Text]:
        """Validation loss and judge mean score over the same steps: side by side, or one above
        the other in a narrow panel."""
        steps = [step for step, _ in self.scores] + self.val.steps
        x_range = (min(steps), max(steps))
        judge = Line([step for step, _ in self.scores], [score.mean for _, score in self.scores],
                     JUDGE_STYLE, [score.ci95 for _, score in self.scores])
        side_by_side = width >= SIDE_BY_SIDE_WIDTH
        left_w = (width - 2) // 2 if side_by_side else width
        left = [Text("━ val loss", style=VAL_STYLE)]
        left += draw_chart([self.val], left_w, CHART_ROWS - 1, x_range=x_range)
        right = [Text("━ judge mean ", style=JUDGE_STYLE).append("┃ 95% CI", style=f"dim {JUDGE_STYLE}")]
        right += draw_chart([judge], width - left_w - 2 if side_by_side else width, CHART_ROWS - 1,
                            x_range=x_range)
        if not side_by_side:
            return left + right
        for row in left:
            row.truncate(left_w, pad=True)
        return [a + Text("  ") + b for a, b in zip(left, right)]

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return self.line_count(width)

    def render(self) -> Text:
        return Text("\n").join(self.rows(self.size.width))
