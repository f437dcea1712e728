"""Writes run directories in the format of docs/metrics.md, as the trainer would, for the
dashboard's tests and benchmarks. Every event carries every documented field."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import orjson

T0 = 1_764_078_000.0  # writer's clock at run_start (any fixed time: tests compare exactly)


def loss_at(step: int) -> float:
    return 0.6 + 2.0 * math.exp(-step / 40)


@dataclass
class RunWriter:
    run_dir: Path
    world_size: int = 2
    total_steps: int = 232
    steps_per_epoch: int = 116
    model: str = "gpt2-medium"
    attempt: int = 0
    time: float = T0
    tokens_total: int = 0
    start_time: float = T0
    hosts: list[str] | None = None  # rank r runs on hosts[r]; node<r> by default

    def __post_init__(self):
        self.run_dir = Path(self.run_dir)
        (self.run_dir / "ranks").mkdir(parents=True, exist_ok=True)

    def host(self, rank: int) -> str:
        return self.hosts[rank] if self.hosts else f"node{rank}"

    @property
    def metrics(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    def rank_file(self, rank: int) -> Path:
        return self.run_dir / "ranks" / f"rank-{rank}.jsonl"

    def append(self, path: Path, event: dict) -> None:
        with open(path, "ab") as f:
            f.write(orjson.dumps(event) + b"\n")

    def emit(self, event: dict) -> dict:
        event = {"v": 1, "type": event.pop("type"), "time": self.time, **event}
        self.append(self.metrics, event)
        return event

    def start(self, resumed_from_step: int = 0) -> dict:
        self.attempt += 1
        self.start_time = self.time
        return self.emit({
            "type": "run_start", "run_id": self.run_dir.name, "model": self.model,
            "params": 354823168, "world_size": self.world_size,
            "hosts": [self.host(i) for i in range(self.world_size)], "zero_stage": 2,
            "precision": "bf16", "micro_batch": 4, "global_batch": 4 * self.world_size,
            "grad_accum": 1, "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
            "epochs": math.ceil(self.total_steps / self.steps_per_epoch), "attempt": self.attempt,
            "resumed_from_step": resumed_from_step,
        })

    def train(self, step: int, loss: float | None = None, seconds: float = 0.5) -> dict:
        self.time += seconds
        tokens = 400 + step % 50
        self.tokens_total += tokens
        elapsed = self.time - self.start_time
        return self.emit({
            "type": "train", "step": step, "epoch": (step - 1) // self.steps_per_epoch + 1,
            "loss": loss_at(step) if loss is None else loss, "lr": 5e-5, "grad_norm": 3.0 + step % 7 / 10,
            "tokens": tokens, "tokens_total": self.tokens_total, "tokens_per_s": tokens / seconds,
            "samples_per_s": 4 * self.world_size / seconds, "mfu": 0.4 + step % 5 / 100,
            "elapsed_s": elapsed, "eta_s": (self.total_steps - step) * seconds,
        })

    def eval(self, step: int, val_loss: float | None = None) -> dict:
        self.time += 0.5
        return self.emit({"type": "eval", "step": step, "train_loss": loss_at(step) - 0.05,
                          "val_loss": loss_at(step) + 0.1 if val_loss is None else val_loss,
                          "full": False})

    def sample(self, step: int, response: str) -> dict:
        self.time += 0.2
        prompt = ("Below is an instruction that describes a task. Write a response that "
                  "appropriately completes the request.\n\n### Instruction:\nConvert the active "
                  "sentence to passive: 'The chef cooks the meal every day.'\n\n### Response:\n")
        return self.emit({"type": "sample", "step": step, "prompt": prompt, "response": response})

    def checkpoint(self, step: int) -> dict:
        self.time += 1.8
        return self.emit({"type": "checkpoint", "step": step, "path": f"checkpoints/global_step{step}",
                          "seconds": 1.8})

    def alert(self, step: int | None, kind: str, message: str, rank: int | None = None) -> dict:
        return self.emit({"type": "alert", "step": step, "kind": kind, "message": message, "rank": rank})

    def generate(self, done: int, total: int) -> dict:
        self.time += 1.0
        return self.emit({"type": "generate", "done": done, "total": total})

    def end(self, status: str, step: int, error: str | None = None, final_val_loss: float = 0.652) -> dict:
        self.time += 1.0
        return self.emit({
            "type": "run_end", "status": status, "error": error, "step": step,
            "tokens_total": self.tokens_total, "elapsed_s": self.time - self.start_time,
            "final_val_loss": final_val_loss if status == "completed" else None,
        })

    def config(self, **flags) -> dict:
        """config.json (docs/metrics.md): `flags` over a few of the trainer's defaults."""
        config = {"model": self.model, "lr": 5e-05, "global_batch": 4 * self.world_size, "epochs": 2,
                  "seed": 123, "zero_stage": 2, **flags}
        document = {"v": 1, "config": config, "ds_config": {}, "precision": "bf16", "layout": {},
                    "world_size": self.world_size, "hosts": [self.host(i) for i in range(self.world_size)],
                    "versions": {}, "provenance": {}, "created": self.start_time}
        write_json(self.run_dir / "config.json", document)
        return document

    def eval_responses(self, step: int, count: int = 5) -> dict:
        """The K validation responses at `step`, and their event (`--judge-samples K`)."""
        path = f"evals/step-{step}.json"
        entries = [{"instruction": f"Task {i}", "input": "", "output": "Done.",
                    "model_response": f"Done at step {step}."} for i in range(count)]
        write_json(self.run_dir / path, entries)
        self.time += 0.3
        return self.emit({"type": "eval_responses", "step": step, "path": path, "count": count})

    def judged_eval(self, step: int, mean: float, ci95: tuple[float, float]) -> dict:
        """The judge summary `python -m judge follow` writes for the evaluation at `step`."""
        summary = judge_summary(mean, ci95)
        write_json(self.run_dir / f"evals/step-{step}.scored.summary.json", summary)
        return summary

    def judge_start(self, keys: tuple[str, ...] = ("model_response", "base_response")) -> dict:
        self.time += 1.0
        return self.emit({"type": "judge_start", "url": "http://gpu-box:11434", "model": "llama3",
                          "api": "ollama", "keys": list(keys)})

    def judge_end(self, mean: float = 51.75, ci95: tuple[float, float] = (47.2, 56.3),
                  base_mean: float | None = 38.1,
                  difference: tuple[float, tuple[float, float]] | None = (13.6, (9.8, 17.5)),
                  summary: bool = True) -> dict:
        """A completed judge of the test responses: its summary (with `summary`) and event."""
        name = "instruction-data-with-response.scored.summary.json"
        if summary:
            base = (base_mean, (base_mean - 4.0, base_mean + 4.0)) if base_mean is not None else None
            write_json(self.run_dir / name, judge_summary(mean, ci95, base, difference))
        self.time += 60.0
        paired = {"n": 110, "mean_diff": difference[0], "ci95": list(difference[1])} if difference else None
        return self.emit({"type": "judge_end", "status": "completed", "error": None,
                          "summary": name if summary else None, "mean": mean, "ci95": list(ci95),
                          "base_mean": base_mean, "tuned_minus_base": paired, "command": None})

    def judge_failed(self, error: str, command: str) -> dict:
        self.time += 5.0
        return self.emit({"type": "judge_end", "status": "failed", "error": error, "summary": None,
                          "mean": None, "ci95": None, "base_mean": None, "tuned_minus_base": None,
                          "command": command})

    def heartbeat(self, rank: int, step: int, phase: str = "forward", phase_for: float = 0.2,
                  gpu: bool = False) -> dict:
        event = {
            "v": 1, "type": "system", "time": self.time, "host": self.host(rank), "rank": rank,
            "local_rank": 0, "pid": 1000 + rank, "step": step, "phase": phase, "phase_since": self.time - phase_for,
            "cpu_percent": 96.0 + rank, "rss_bytes": 1_523_000_000 + rank * 1_000_000,
            "gpu_util_percent": 87.0 if gpu else None,
            "gpu_mem_used_bytes": 40 * 2**30 if gpu else None,
            "gpu_mem_total_bytes": 80 * 2**30 if gpu else None,
        }
        self.append(self.rank_file(rank), event)
        return event

    def touch(self, when: float) -> None:
        """Date metrics.jsonl and every heartbeat file at `when`, as if last written then (a
        reader dates a file by its mtime until it sees it grow: docs/metrics.md)."""
        for path in [self.metrics, *self.run_dir.glob("ranks/*.jsonl")]:
            os.utime(path, (when, when))

    def steps(self, first: int, last: int, eval_every: int = 0) -> None:
        """Train steps first..last, with an eval and a sample every `eval_every` steps."""
        for step in range(first, last + 1):
            self.train(step)
            if eval_every and step % eval_every == 0:
                self.eval(step)
                self.sample(step, f"The meal is cooked by the chef every day. ({step})")


def write_json(path: Path, document) -> None:
    """Atomically, as the trainer and the judge write their JSON files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(orjson.dumps(document))
    os.replace(tmp, path)


class BufferedRunWriter(RunWriter):
    """Collects the lines and writes them on `flush()`: for the benchmarks' million events,
    where opening the file once per event would dominate."""

    def __post_init__(self):
        super().__post_init__()
        self.pending: dict[Path, list[bytes]] = {}

    def append(self, path: Path, event: dict) -> None:
        self.pending.setdefault(path, []).append(orjson.dumps(event) + b"\n")

    def flush(self) -> None:
        for path, lines in self.pending.items():
            with open(path, "ab") as f:
                f.writelines(lines)
        self.pending.clear()


def judge_summary(mean: float = 51.75, ci95: tuple[float, float] = (47.2, 56.3),
                  base: tuple[float, tuple[float, float]] | None = None,
                  difference: tuple[float, tuple[float, float]] | None = None) -> dict:
    """The example of docs/judge.md; with `base` (mean, ci95) a `base_response` key too, and
    with `difference` (mean, ci95) its `paired` item, tuned minus base."""
    summary = {
        "v": 1, "type": "judge_summary", "time": 1764080000.5,
        "input": "runs/x/instruction-data-with-response.json",
        "output": "runs/x/instruction-data-with-response.scored.json",
        "judge": {"model": "llama3", "digest": "365c0bd3c000", "api": "ollama",
                  "url": "http://localhost:11434", "server_version": "0.12.3", "structured": False,
                  "options": {"seed": 123, "temperature": 0, "num_ctx": 2048}},
        "wall_s": 41.2, "requests": 113, "requests_per_s": 2.74, "retries": 3,
        "keys": {"model_response": key_stats(mean, ci95)},
        "paired": [],
    }
    if base is not None:
        summary["keys"]["base_response"] = key_stats(*base)
    if difference is not None:
        summary["paired"].append({"a": "model_response", "b": "base_response", "n": 110,
                                  "mean_diff": difference[0], "ci95": list(difference[1])})
    return summary


def key_stats(mean: float, ci95: tuple[float, float]) -> dict:
    return {
        "total": 110, "scored": 108, "failed": 1, "unparseable": 1,
        "mean": mean, "median": 55.0, "std": 24.1, "ci95": list(ci95),
        "histogram": {"edges": [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100],
                      "counts": [5, 4, 6, 9, 12, 20, 18, 16, 10, 8]},
        "failed_indices": [17], "unparseable_indices": [42]}
