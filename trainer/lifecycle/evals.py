"""Judged evaluations (`--judge-samples K`): quality over the steps, not only the loss.

At up to MAX_JUDGED evaluations of the run (the chapter's, each epoch's end and the final one),
evenly spread with the first and the last included (or every `--judge-every N` steps), the model
answers a fixed set of K validation prompts (the same K each time, chosen with the seed), greedily
with the test responses' settings, sharded across ranks; rank 0 writes them to
evals/step-<N>.json (the format of the responses file) and an
`eval_responses` event. Training never waits for the judge: `python -m judge follow RUN_DIR`
scores each file as it appears (docs/judge.md), started by rank 0 itself with --judge-url.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import torch.distributed as dist

from instruct import atomic_write_json
from trainer.gpt2.generation import generate_responses
from trainer.lifecycle.final import KEY, generation_settings
from trainer.reporting.events import EvalResponses
from trainer.training.batches import rank_slice
from trainer.training.engine import plain_model

EVALS_DIR = "evals"
MAX_JUDGED = 10


def judged_steps(eval_steps: list[int], judge_every: int | None, total_steps: int) -> set[int]:
    """The steps whose evaluations are judged."""
    if judge_every:
        return {step for step in range(judge_every, total_steps + 1, judge_every)}
    if len(eval_steps) <= MAX_JUDGED:
        return set(eval_steps)
    last = len(eval_steps) - 1
    return {eval_steps[round(i * last / (MAX_JUDGED - 1))] for i in range(MAX_JUDGED)}


def forget_after(run_dir: Path, step: int) -> None:
    """A resumed run's judged evaluations past the step it resumes from are the earlier attempt's:
    the new attempt writes them again (docs/metrics.md)."""
    for path in (run_dir / EVALS_DIR).glob("step-*"):
        number = path.name.removeprefix("step-").split(".", 1)[0]
        if number.isdigit() and int(number) > step:
            shutil.rmtree(path) if path.is_dir() else path.unlink()


class JudgedEvaluations:
    """Called after every step; answers the fixed prompts at the judged steps (every rank)."""

    def __init__(self, loop, run_dir: Path, on_first=None):
        config = loop.config
        self.loop = loop
        self.run_dir = run_dir
        self.on_first = on_first  # rank 0, at the first file written (starts the judge's follow)
        entries = loop.data.val_entries
        chosen = sorted(random.Random(config.seed).sample(range(len(entries)), min(config.judge_samples, len(entries))))
        self.entries = [entries[i] for i in chosen]
        self.steps = judged_steps(loop.evaluation_steps(), config.judge_every, loop.total_steps)
        self.written = 0

    def __call__(self, step: int) -> None:
        if step not in self.steps:
            return
        loop = self.loop
        loop.heartbeat.phase = "generate"
        model = plain_model(loop.engine)  # collective under ZeRO-3
        mine = rank_slice(list(range(len(self.entries))), loop.dist.rank, loop.dist.world_size)
        answers = generate_responses(model, loop.data.tokenizer, [self.entries[i] for i in mine],
                                     generation_settings(loop.config))
        shares = [None] * loop.dist.world_size
        dist.all_gather_object(shares, dict(zip(mine, answers)))
        if loop.dist.is_main:
            responses = {i: answer for share in shares for i, answer in share.items()}
            path = self.run_dir / EVALS_DIR / f"step-{step}.json"
            atomic_write_json(path, [{**entry, KEY: responses[i]} for i, entry in enumerate(self.entries)])
            loop.log.event(EvalResponses(step=step, path=f"{EVALS_DIR}/{path.name}", count=len(self.entries)))
            self.written += 1
            if self.written == 1 and self.on_first is not None:
                self.on_first()
        loop.heartbeat.phase = "idle"
