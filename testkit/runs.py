"""Writes run directories in the format of docs/metrics.md, as the trainer would, for the
dashboard's tests and benchmarks. Every event carries every documented field."""

from __future__ import annotations

import math
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

    def end(self, status: str, step: int, error: str | None = None) -> dict:
        self.time += 1.0
        return self.emit({
            "type": "run_end", "status": status, "error": error, "step": step,
            "tokens_total": self.tokens_total, "elapsed_s": self.time - self.start_time,
            "final_val_loss": 0.652 if status == "completed" else None,
        })

    def heartbeat(self, rank: int, step: int, phase: str = "forward", phase_for: float = 0.2,
                  gpu: bool = False) -> dict:
        event = {
            "v": 1, "type": "system", "time": self.time, "host": self.host(rank), "rank": rank,
            "local_rank": 0, "step": step, "phase": phase, "phase_since": self.time - phase_for,
            "cpu_percent": 96.0 + rank, "rss_bytes": 1_523_000_000 + rank * 1_000_000,
            "gpu_util_percent": 87.0 if gpu else None,
            "gpu_mem_used_bytes": 40 * 2**30 if gpu else None,
            "gpu_mem_total_bytes": 80 * 2**30 if gpu else None,
        }
        self.append(self.rank_file(rank), event)
        return event

    def steps(self, first: int, last: int, eval_every: int = 0) -> None:
        """Train steps first..last, with an eval and a sample every `eval_every` steps."""
        for step in range(first, last + 1):
            self.train(step)
            if eval_every and step % eval_every == 0:
                self.eval(step)
                self.sample(step, f"The meal is cooked by the chef every day. ({step})")


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


def judge_summary() -> dict:
    """The example of docs/judge.md."""
    return {
        "v": 1, "type": "judge_summary", "time": 1764080000.5,
        "input": "runs/x/instruction-data-with-response.json",
        "output": "runs/x/instruction-data-with-response.scored.json",
        "judge": {"model": "llama3", "digest": "365c0bd3c000", "api": "ollama",
                  "url": "http://localhost:11434", "server_version": "0.12.3", "structured": False,
                  "options": {"seed": 123, "temperature": 0, "num_ctx": 2048}},
        "wall_s": 41.2, "requests": 113, "requests_per_s": 2.74, "retries": 3,
        "keys": {"model_response": {
            "total": 110, "scored": 108, "failed": 1, "unparseable": 1,
            "mean": 51.75, "median": 55.0, "std": 24.1, "ci95": [47.2, 56.3],
            "histogram": {"edges": [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100],
                          "counts": [5, 4, 6, 9, 12, 20, 18, 16, 10, 8]},
            "failed_indices": [17], "unparseable_indices": [42]}},
        "paired": [],
    }
