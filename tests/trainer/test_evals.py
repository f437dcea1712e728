"""Which evaluations are judged (--judge-samples): up to 10, evenly spread, the first and the last
included, or every --judge-every N steps; and what a resume forgets."""

from __future__ import annotations

from trainer.lifecycle.evals import MAX_JUDGED, forget_after, judged_steps


def test_all_evaluations_when_there_are_few():
    assert judged_steps([1, 11, 21], None, 30) == {1, 11, 21}


def test_ten_evenly_spread_with_the_first_and_the_last():
    evals = list(range(1, 233, 5))  # the chapter's run: 232 steps, an evaluation every 5
    chosen = sorted(judged_steps(evals, None, 232))
    assert len(chosen) == MAX_JUDGED and chosen[0] == 1 and chosen[-1] == evals[-1]
    gaps = [b - a for a, b in zip(chosen, chosen[1:])]
    assert max(gaps) - min(gaps) <= 5  # one evaluation apart at most


def test_every_n_steps():
    assert judged_steps([1, 11, 21], 7, 30) == {7, 14, 21, 28}


def test_a_resume_forgets_the_judged_evaluations_it_replays(tmp_path):
    evals = tmp_path / "evals"
    evals.mkdir()
    for name in ("step-10.json", "step-10.scored.summary.json", "step-20.json", "step-20.scored.json",
                 "step-20.scored.summary.json", "step-20.scored.journal.jsonl", "step-3.json"):
        (evals / name).write_text("{}")
    forget_after(tmp_path, 10)
    assert sorted(p.name for p in evals.iterdir()) == ["step-10.json", "step-10.scored.summary.json", "step-3.json"]
