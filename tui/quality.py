"""Quality as the judge measured it: each judged evaluation's mean score against step, and the
final verdict on the test responses, tuned minus base. Read from the judge summaries
(docs/judge.md) and the `judge_end` event (docs/metrics.md); plain Python, no I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass

from tui.fields import integer, is_number, object_field, text_field

# A judged evaluation's summary, relative to the run directory (docs/metrics.md, "Layout").
EVAL_SUMMARY = re.compile(r"evals/step-(\d+)\.scored\.summary\.json")
# The test responses' summary when `judge_end` names none (the name `python -m judge score`
# gives it by default: docs/judge.md).
FINAL_SUMMARY = "instruction-data-with-response.scored.summary.json"
TUNED, BASE = "model_response", "base_response"  # the scored keys compared


@dataclass(frozen=True)
class Estimate:
    """A mean (a score, or a paired difference) and its bootstrap 95% CI."""

    mean: float
    ci95: tuple[float, float] | None
    n: int | None = None  # the entries a paired difference is over

    def text(self, signed: bool = False) -> str:
        """`51.75 [47.2, 56.3]`; signed: `+13.60 [9.8, 17.5]`."""
        ci = f" [{self.ci95[0]:.1f}, {self.ci95[1]:.1f}]" if self.ci95 else ""
        return f"{self.mean:{'+' if signed else ''}.2f}{ci}"

    def short(self, signed: bool = False) -> str:
        """`51.8±4.5`: the mean and half the CI's width, for tables."""
        half = f"±{(self.ci95[1] - self.ci95[0]) / 2:.1f}" if self.ci95 else ""
        return f"{self.mean:{'+' if signed else ''}.1f}{half}"


def estimate(mean, ci95, n=None) -> Estimate | None:
    """An Estimate from a summary's or an event's fields, or None when the mean is missing."""
    if not is_number(mean):
        return None
    ci = None
    if isinstance(ci95, list) and len(ci95) == 2 and all(map(is_number, ci95)):
        ci = (float(ci95[0]), float(ci95[1]))
    return Estimate(float(mean), ci, n if is_number(n) else None)


def key_score(summary: dict, key: str = TUNED) -> Estimate | None:
    stats = object_field(object_field(summary, "keys"), key)
    return estimate(stats.get("mean"), stats.get("ci95"))


def paired_difference(summary: dict, a: str = TUNED, b: str = BASE) -> Estimate | None:
    for pair in summary.get("paired") or []:
        if isinstance(pair, dict) and pair.get("a") == a and pair.get("b") == b:
            return estimate(pair.get("mean_diff"), pair.get("ci95"), integer(pair, "n"))
    return None


def eval_scores(summaries: dict[str, dict | str]) -> list[tuple[int, Estimate]]:
    """(step, tuned mean score) of each judged evaluation, in step order."""
    scores = []
    for name, summary in summaries.items():
        match = EVAL_SUMMARY.fullmatch(name)
        if match and isinstance(summary, dict) and (score := key_score(summary)) is not None:
            scores.append((int(match[1]), score))
    return sorted(scores, key=lambda item: item[0])


@dataclass(frozen=True)
class FinalJudge:
    """The judge's verdict on the test responses after training."""

    tuned: Estimate | None
    base: Estimate | None
    difference: Estimate | None  # tuned minus base, paired
    judge: str  # the judge model, "" when unknown
    error: str  # why the judge failed, "" unless it did (and no summary says otherwise)
    command: str  # the command that finishes a failed judge's job, else ""


def final_judge(judge_end: dict | None, summaries: dict[str, dict | str]) -> FinalJudge | None:
    """From the test responses' summary when it is there (it may also come from a judge run
    by hand after a failed `judge_end`), else from `judge_end`; None when neither is."""
    end = judge_end or {}
    name = text_field(end, "summary", FINAL_SUMMARY)
    summary = summaries.get(name)
    if isinstance(summary, dict):
        return FinalJudge(key_score(summary), key_score(summary, BASE), paired_difference(summary),
                          text_field(object_field(summary, "judge"), "model"), "", "")
    if judge_end is None:
        return None
    paired = object_field(end, "tuned_minus_base")
    return FinalJudge(
        tuned=estimate(end.get("mean"), end.get("ci95")),
        base=estimate(end.get("base_mean"), None),
        difference=estimate(paired.get("mean_diff"), paired.get("ci95"), integer(paired, "n")),
        judge="",
        error=text_field(end, "error") if text_field(end, "status") == "failed" else "",
        command=text_field(end, "command"),
    )


def judge_label(judge_start: dict | None) -> str:
    """`llama3 (ollama)` from `judge_start`, "" without one."""
    if judge_start is None:
        return ""
    return f"{text_field(judge_start, 'model', '?')} ({text_field(judge_start, 'api', '?')})"

