"""Every event of docs/metrics.md, one dataclass each: the only definition of the contract in code.

A writer builds one of these and hands it to MetricsWriter (metrics.jsonl) or writes its record to
a heartbeat file; nothing writes an event as a loose dict. tests/trainer/test_events.py checks
each class's fields against the field table of docs/metrics.md, both ways. The dashboard reads
the same document and imports none of this.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields
from typing import ClassVar

SCHEMA_VERSION = 1

ALERT_KINDS = ("nonfinite_loss", "rank_lost", "signal", "warning")
RUN_STATUSES = ("completed", "interrupted", "failed")
# What a rank is doing, in its heartbeats. A `wait_<phase>` rank waits, outside any collective,
# for another rank's solo work in <phase> (docs/metrics.md, "Heartbeats").
PHASES = ("data", "forward", "backward", "step", "eval", "generate", "checkpoint", "idle",
          "convert", "export", "tokenize", "wait_convert", "wait_export", "wait_generate", "wait_tokenize")


@dataclass(frozen=True)
class Event:
    """The fields every event has besides `v`, `type` and `time`, which `record` adds."""

    TYPE: ClassVar[str]

    def record(self) -> dict:
        return {"v": SCHEMA_VERSION, "type": self.TYPE, "time": time.time(), **asdict(self)}

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


@dataclass(frozen=True)
class RunStart(Event):
    TYPE = "run_start"
    run_id: str
    model: str
    params: int
    world_size: int
    hosts: list[str]
    zero_stage: int
    precision: str
    micro_batch: int
    global_batch: int
    grad_accum: int
    steps_per_epoch: int
    total_steps: int
    epochs: int
    attempt: int
    resumed_from_step: int


@dataclass(frozen=True)
class Train(Event):
    TYPE = "train"
    step: int
    epoch: int
    loss: float
    lr: float
    grad_norm: float | None
    tokens: int
    tokens_total: int
    tokens_per_s: float | None
    samples_per_s: float | None
    mfu: float | None
    elapsed_s: float
    eta_s: float | None


@dataclass(frozen=True)
class Eval(Event):
    TYPE = "eval"
    step: int
    train_loss: float | None
    val_loss: float
    full: bool


@dataclass(frozen=True)
class Sample(Event):
    TYPE = "sample"
    step: int
    prompt: str
    response: str


@dataclass(frozen=True)
class Generate(Event):
    TYPE = "generate"
    done: int
    total: int


@dataclass(frozen=True)
class Checkpoint(Event):
    TYPE = "checkpoint"
    step: int
    path: str
    seconds: float


@dataclass(frozen=True)
class Alert(Event):
    TYPE = "alert"
    step: int  # the last finished step, for every kind
    kind: str
    message: str
    rank: int | None

    def __post_init__(self):
        if self.kind not in ALERT_KINDS:
            raise ValueError(f"alert kind {self.kind!r} is not one of {ALERT_KINDS}")


@dataclass(frozen=True)
class RunEnd(Event):
    TYPE = "run_end"
    status: str
    error: str | None
    step: int
    tokens_total: int
    elapsed_s: float
    final_val_loss: float | None

    def __post_init__(self):
        if self.status not in RUN_STATUSES:
            raise ValueError(f"run_end status {self.status!r} is not one of {RUN_STATUSES}")
        if self.final_val_loss is not None and self.status != "completed":
            raise ValueError("final_val_loss is null unless the run completed")


@dataclass(frozen=True)
class JudgeStart(Event):
    TYPE = "judge_start"
    url: str
    model: str
    api: str
    keys: list[str]


@dataclass(frozen=True)
class JudgeEnd(Event):
    TYPE = "judge_end"
    status: str
    error: str | None
    summary: str | None
    mean: float | None
    ci95: list[float] | None
    base_mean: float | None
    tuned_minus_base: dict | None
    command: str | None


@dataclass(frozen=True)
class EvalResponses(Event):
    TYPE = "eval_responses"
    step: int
    path: str
    count: int


@dataclass(frozen=True)
class System(Event):
    """A heartbeat line of ranks/rank-<N>.jsonl."""

    TYPE = "system"
    host: str
    rank: int
    local_rank: int
    pid: int
    step: int
    phase: str
    phase_since: float
    cpu_percent: float
    rss_bytes: int
    gpu_util_percent: float | None
    gpu_mem_used_bytes: int | None
    gpu_mem_total_bytes: int | None


EVENTS: dict[str, type[Event]] = {
    cls.TYPE: cls
    for cls in (RunStart, Train, Eval, Sample, Generate, Checkpoint, Alert, RunEnd, JudgeStart, JudgeEnd,
                EvalResponses, System)
}
