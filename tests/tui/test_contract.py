"""docs/metrics.md against the dashboard: every example line of the document is read as it
says, and the synthetic runs the other tests use carry every documented field."""

from __future__ import annotations

import re

import orjson

from testkit.paths import REPO
from testkit.runs import RunWriter
from tui.follow import RunFollower, Skipped
from tui.quality import Estimate, FinalJudge
from tui.state import RunState


def documented_examples() -> dict[str, dict]:
    """The example line of each event type, by type, in the document's order."""
    text = (REPO / "docs" / "metrics.md").read_text()
    examples = [orjson.loads(block) for block in re.findall(r"```json\n(\{.*?\})\n```", text)]
    return {example["type"]: example for example in examples}


def test_the_documents_examples_are_read_as_documented(tmp_path):
    examples = documented_examples()
    assert sorted(examples) == ["alert", "checkpoint", "eval", "eval_responses", "generate", "judge_end",
                                "judge_start", "run_end", "run_start", "sample", "system", "train"]
    (tmp_path / "ranks").mkdir()
    (tmp_path / "metrics.jsonl").write_bytes(b"".join(
        orjson.dumps(example) + b"\n" for kind, example in examples.items() if kind != "system"))
    (tmp_path / "ranks" / "rank-1.jsonl").write_bytes(orjson.dumps(examples["system"]) + b"\n")
    state = RunState()
    state.apply_poll(RunFollower(tmp_path, clock=lambda: 0.0).poll(), 0.0)
    assert state.skipped() == Skipped() and state.events_read == 11
    assert state.status(0.0) == "completed" and state.step() == 232 and state.final_val() == 0.652
    assert state.series["loss"].last == 2.4183 and state.series["val_loss"].last == 2.01
    assert state.final_judge() == FinalJudge(tuned=Estimate(51.75, (47.2, 56.3)), base=Estimate(38.1, None),
                                             difference=Estimate(13.6, (9.8, 17.5), 110), judge="", error="",
                                             command="")
    assert state.judge_start["model"] == "llama3"
    assert state.eval_responses == [10] and state.judge_pending() == 1
    assert state.duration() == 1764078200.0 - 1764078000.12
    [row] = state.rank_rows(0.0)
    assert (row.rank, row.host, row.phase, row.step) == (1, "node1", "forward", 12)


def test_synthetic_runs_carry_every_documented_field(tmp_path):
    writer = RunWriter(tmp_path / "run")
    writer.start()
    writer.train(1)
    writer.eval(1)
    writer.sample(1, "A response.")
    writer.checkpoint(1)
    writer.alert(1, "warning", "a warning", rank=0)
    writer.eval_responses(1)
    writer.generate(1, 2)
    writer.end("completed", 1)
    writer.judge_start()
    writer.judge_end()
    writer.heartbeat(0, 1)
    written = [orjson.loads(line) for path in (writer.metrics, writer.rank_file(0))
               for line in path.read_bytes().splitlines()]
    documented = documented_examples()
    assert {event["type"] for event in written} == set(documented)
    for event in written:
        assert event.keys() == documented[event["type"]].keys(), event["type"]
