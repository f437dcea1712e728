"""docs/metrics.md against trainer/reporting/events.py, both ways: every documented event is
defined in code with exactly the documented fields, its example line has exactly those fields, and
every event the code defines is documented. Likewise the alert kinds, run statuses and phases."""

from __future__ import annotations

import re

import orjson
import pytest

from testkit.paths import REPO
from trainer.reporting.events import ALERT_KINDS, EVENTS, PHASES, RUN_STATUSES, Alert, RunEnd

DOC = (REPO / "docs" / "metrics.md").read_text()
COMMON = {"v", "type", "time"}


def documented_events() -> dict[str, tuple[dict, dict[str, str]]]:
    """{type: (the example line, {field: its table row})} for each one-line JSON example followed
    by a field table."""
    found = {}
    for match in re.finditer(r"```json\n(\{.*?\})\n```\n(.*?)(?=\n#|\Z)", DOC, re.S):
        example = orjson.loads(match.group(1))
        table = [line for line in match.group(2).splitlines() if line.startswith("| `")]
        rows = {}
        for line in table:
            first_cell = line.split("|")[1]
            for name in re.findall(r"`([^`]+)`", first_cell):
                rows[name] = line
        found[example["type"]] = (example, rows)
    return found


DOCUMENTED = documented_events()


def test_every_event_is_documented_and_defined():
    assert set(DOCUMENTED) == set(EVENTS)


@pytest.mark.parametrize("type_", sorted(EVENTS))
def test_fields_match_the_doc_both_ways(type_):
    example, rows = DOCUMENTED[type_]
    fields = set(EVENTS[type_].field_names())
    assert set(rows) == fields, f"{type_}: table {sorted(rows)} vs code {sorted(fields)}"
    assert set(example) - COMMON == fields, f"{type_}: example {sorted(example)} vs code {sorted(fields)}"
    record = EVENTS[type_](**{k: example[k] for k in fields}).record()
    assert set(record) == set(example) and record["type"] == type_ and record["v"] == 1


def cell_names(type_: str, field: str) -> set[str]:
    row = DOCUMENTED[type_][1][field]
    return set(re.findall(r"`([a-z_0-9<>]+)`", "|".join(row.split("|")[2:])))


def test_alert_kinds_run_statuses_and_phases_match_the_doc():
    assert cell_names("alert", "kind") == set(ALERT_KINDS)
    assert {"completed", "interrupted", "failed"} <= cell_names("run_end", "status")
    assert set(RUN_STATUSES) == {"completed", "interrupted", "failed"}
    heartbeats = DOC[DOC.index("## Heartbeats"):]
    documented_phases = set(re.findall(r"`([a-z_]+)`", heartbeats.split("| `phase_since`")[0].split("| `phase`")[1]))
    documented_phases |= set(re.findall(r"`(wait_[a-z]+)`", heartbeats))
    assert documented_phases == set(PHASES)


def test_the_contract_is_enforced_when_an_event_is_made():
    with pytest.raises(ValueError, match="alert kind"):
        Alert(step=0, kind="oops", message="", rank=None)
    with pytest.raises(ValueError, match="final_val_loss is null unless"):
        RunEnd(status="failed", error="x", step=1, tokens_total=1, elapsed_s=1.0, final_val_loss=2.0)


def test_input_warnings_are_alerts_at_the_last_finished_step(tmp_path):
    """What the console warns about at the start of a run is also a `warning` alert: examples cut by
    --max-length, and each DeepSpeed config key whose concrete value a flag overrides."""
    from types import SimpleNamespace

    from trainer.lifecycle.pipeline import warn_about_inputs
    from trainer.reporting.metrics import MetricsWriter, read_events
    from trainer.reporting.runlog import RunLog, Throughput
    from trainer.training.config import TrainConfig

    writer = MetricsWriter(tmp_path / "metrics.jsonl")
    log = RunLog(writer, Throughput(1, 1, 1, 1, None, "fp32"))
    plan = SimpleNamespace(overridden=["gradient_clipping"], data=SimpleNamespace(truncated=(3, 1)))
    warn_about_inputs(log, TrainConfig(max_length=64, ds_config="ds.json"), plan, step=40)
    writer.close()
    alerts = read_events(tmp_path / "metrics.jsonl")
    assert [(a["type"], a["kind"], a["step"], a["rank"]) for a in alerts] == [("alert", "warning", 40, None)] * 2
    assert alerts[0]["message"] == "ds.json sets 'gradient_clipping': the run's flags win"
    assert alerts[1]["message"].startswith("3 training examples exceed --max-length 64 and are truncated (1 of them")


@pytest.mark.parametrize("flags, user, expected", [
    ({"zero_stage": 1, "precision": "fp32"}, {"zero_optimization": {"stage": 3}, "bf16": {"enabled": True}},
     ["zero_optimization.stage", "bf16.enabled"]),
    ({"precision": "bf16"}, {"bf16": {"enabled": False}, "fp16": {"enabled": True}}, ["bf16.enabled", "fp16.enabled"]),
    ({"zero_stage": 3, "precision": "bf16"}, {"zero_optimization": {"stage": 3}, "bf16": {"enabled": True}}, []),
    ({"zero_stage": 1, "precision": "fp32"}, {"zero_optimization": {"stage": "auto"}, "bf16": {"enabled": "auto"}}, []),
    # No flag: the file's stage stands; --precision auto picks fp32 on this CPU, replacing its bf16.
    ({}, {"zero_optimization": {"stage": 3}, "bf16": {"enabled": True}}, ["bf16.enabled"]),
    ({}, {"zero_optimization": {"stage": 3}, "bf16": {"enabled": False}}, []),
])
def test_zero_stage_and_precision_flags_warn_where_they_override_the_ds_config(tmp_path, flags, user, expected):
    """--zero-stage, and the run's precision (given, or picked by --precision auto), that replace
    a concrete value of the DeepSpeed config are `warning` alerts too ("auto", or the same value,
    overrides nothing)."""
    from types import SimpleNamespace

    from trainer.lifecycle.pipeline import warn_about_inputs
    from trainer.reporting.metrics import MetricsWriter, read_events
    from trainer.reporting.runlog import RunLog, Throughput
    from trainer.training.config import TrainConfig, batch_layout
    from trainer.training.engine import build_ds_config

    config = TrainConfig(ds_config="ds.json", **flags)
    precision = "fp32" if config.precision == "auto" else config.precision  # resolved on this CPU
    ds, overridden = build_ds_config(user, config, batch_layout(8, None, 1), precision)
    assert overridden == expected
    if "zero_stage" in flags:
        assert ds["zero_optimization"]["stage"] == flags["zero_stage"]
    assert (ds["bf16"]["enabled"], ds["fp16"]["enabled"]) == (precision == "bf16", precision == "fp16")
    writer = MetricsWriter(tmp_path / "metrics.jsonl")
    warn_about_inputs(RunLog(writer, Throughput(1, 1, 1, 1, None, precision)), config,
                      SimpleNamespace(overridden=overridden, data=SimpleNamespace(truncated=(0, 0))), step=0)
    writer.close()
    assert [a["message"] for a in read_events(tmp_path / "metrics.jsonl")] == [
        f"ds.json sets '{key}': the run's flags win" for key in expected]
