"""The scored file, written as a stream: entry by entry into a temporary file that replaces the
output at the end (a reader or a crash never sees half of it), the summary's per-key figures
counted on the way, so memory holds one entry at a time however long the input.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import orjson

from instruct import EntryError, atomic_file
from judge.inputs import CHANGED
from judge.journal import Result
from judge.stats import describe, paired_difference

# What the judge adds per scored key (docs/judge.md); an input that already has them (a scored
# file scored again) gets them replaced, never kept beside the new score.
ADDED_FIELDS = ("{key}_score", "{key}_judge_reply", "{key}_judge_error", "{key}_truncated")


@dataclass
class KeyFigures:
    """One key's counts over the entries, gathered while writing."""

    total: int = 0
    scores: Counter = field(default_factory=Counter)
    judged: int = 0  # entries with a judge's reply (scored by request or unparseable)
    truncation_unknown: int = 0  # judged entries whose reply gave no prompt token count
    failed: list[int] = field(default_factory=list)
    unparseable: list[int] = field(default_factory=list)
    truncated: list[int] = field(default_factory=list)

    def add(self, index: int, result: Result, requested: bool) -> None:
        self.total += 1
        if result.score is not None:
            self.scores[result.score] += 1
        if result.error is not None:
            self.failed.append(index)
            return
        if result.score is None:
            self.unparseable.append(index)
        if requested:
            self.judged += 1
            if result.truncated is None:
                self.truncation_unknown += 1
            elif result.truncated:
                self.truncated.append(index)

    def summary(self) -> dict:
        unknown = self.judged > 0 and self.truncation_unknown == self.judged
        return {
            "total": self.total,
            "scored": sum(self.scores.values()),
            "failed": len(self.failed),
            "unparseable": len(self.unparseable),
            **describe(self.scores),
            "failed_indices": self.failed,
            "unparseable_indices": self.unparseable,
            "truncated": "unknown" if unknown else len(self.truncated),
            "truncated_indices": self.truncated,
            "truncation_unknown": self.truncation_unknown,
        }


def scored_entry(entry: dict, keys: tuple[str, ...], results: dict[str, Result], added: frozenset[str]) -> dict:
    """The entry with the judge's fields for each key (`added`, replaced where the entry has them):
    `<key>_score`, and the reply, the error or the truncation flag where there is one."""
    out = {name: value for name, value in entry.items() if name not in added}
    for key in keys:
        result = results[key]
        out[f"{key}_score"] = result.score
        if result.error is not None:
            out[f"{key}_judge_error"] = result.error
        elif result.score is None:
            out[f"{key}_judge_reply"] = result.reply
        if result.truncated:
            out[f"{key}_truncated"] = True
    return out


def write_scored(
    path: Path,
    entries: Iterable[dict],
    keys: tuple[str, ...],
    results: Iterator[Result | None],
    input_path: Path,
) -> tuple[dict, list]:
    """Write the scored file (a JSON list, indented as before: two spaces); return each key's
    figures and the paired differences of each pair of keys, in command-line order.

    `results` holds the result of each non-empty response, in input order (None: it was never
    requested, which means the input changed while it was being scored); an empty response
    scores 0 without one."""
    figures = {key: KeyFigures() for key in keys}
    added = frozenset(name.format(key=key) for key in keys for name in ADDED_FIELDS)
    pairs = list(itertools.combinations(keys, 2))
    differences = {pair: Counter() for pair in pairs}
    with atomic_file(path) as out:
        out.write(b"[")
        for index, entry in enumerate(entries):
            scored = {}
            for key in keys:
                requested = entry[key] != ""
                result = next(results, None) if requested else Result(0)
                if result is None:
                    raise EntryError(f"{input_path}: entry {index}: {CHANGED}")
                scored[key] = result
                figures[key].add(index, result, requested)
            for a, b in pairs:
                if scored[a].score is not None and scored[b].score is not None:
                    differences[(a, b)][scored[a].score - scored[b].score] += 1
            text = orjson.dumps(scored_entry(entry, keys, scored, added), option=orjson.OPT_INDENT_2)
            out.write((b",\n  " if index else b"\n  ") + text.replace(b"\n", b"\n  "))
        if next(results, None) is not None:
            raise EntryError(f"{input_path}: {CHANGED}")
        out.write(b"\n]\n")
    paired = [{"a": a, "b": b, **paired_difference(differences[(a, b)])} for a, b in pairs]
    return {key: f.summary() for key, f in figures.items()}, paired
