"""What a finished run leaves behind (every rank helps, rank 0 writes).

- instruction-data-with-response.json: the test entries plus `model_response`, as the chapter,
  generated in batches with the KV cache, the entries sharded across ranks;
- the fine-tuned model as the chapter names it (e.g. gpt2-medium355M-sft.pth, chapter key names)
  and as Hugging Face files (hf/model.safetensors + hf/config.json);
- loss.png: train and validation loss against steps and tokens seen, as the chapter draws it.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch.distributed as dist

from instruct import atomic_write_json, format_input
from trainer.consolidate import plain_model

RESPONSES_FILE = "instruction-data-with-response.json"


def sample_response(trainer) -> tuple[str | None, str | None]:
    """Greedy response to the first validation entry. Collective under ZeRO-3: call on every rank."""
    from trainer.generate import generate_responses
    from trainer.loop import SAMPLE_NEW_TOKENS

    trainer.heartbeat.phase = "generate"
    model = plain_model(trainer.engine)
    prompt = response = None
    if trainer.dist.is_main:
        entry = trainer.data.val_entries[0]
        was_training = model.training
        model.eval()
        [response] = generate_responses(
            model, trainer.data.tokenizer, [entry], batch_size=1, max_new_tokens=SAMPLE_NEW_TOKENS,
            compile=trainer.config.compile,
        )
        model.train(was_training)
        prompt = format_input(entry)
    if dist.is_initialized():
        dist.barrier()
    trainer.heartbeat.phase = "idle"
    return prompt, response


def shard(items: list, rank: int, world_size: int) -> range:
    """Contiguous, near-equal shard of indices for one rank."""
    per_rank = math.ceil(len(items) / world_size)
    return range(min(rank * per_rank, len(items)), min((rank + 1) * per_rank, len(items)))


def generate_test_responses(trainer, run_dir: Path, model) -> Path:
    """Responses for the whole test split, sharded across ranks, written by rank 0."""
    from trainer.generate import generate_responses

    trainer.heartbeat.phase = "generate"
    entries = trainer.data.test_entries
    mine = shard(entries, trainer.dist.rank, trainer.dist.world_size)
    total = len(entries)
    log = trainer.log

    def on_batch(done: int, shard_total: int) -> None:
        # Rank 0 sees only its own shard until the gather: scale it to an estimate of the whole.
        log.event("generate", done=min(total, done * trainer.dist.world_size), total=total)

    model.eval()
    responses = generate_responses(
        model,
        trainer.data.tokenizer,
        [entries[i] for i in mine],
        batch_size=trainer.config.generate_batch,
        max_new_tokens=trainer.config.max_new_tokens,
        compile=trainer.config.compile,
        on_batch=on_batch if trainer.dist.is_main else None,
    )
    gathered = [None] * trainer.dist.world_size
    dist.all_gather_object(gathered, responses)
    path = run_dir / RESPONSES_FILE
    if trainer.dist.is_main:
        all_responses = [r for part in gathered for r in part]
        out = [{**entry, "model_response": response} for entry, response in zip(entries, all_responses)]
        atomic_write_json(path, out)
        log.event("generate", done=total, total=total)
    trainer.heartbeat.phase = "idle"
    return path


def export_model(model, run_dir: Path, preset: str) -> tuple[Path, Path]:
    """The chapter-named .pth and the Hugging Face files, in fp32. Rank 0 only."""
    from trainer.weights import chapter_filename, export_chapter_pth, export_hf

    pth = run_dir / chapter_filename(preset)
    export_chapter_pth(model, pth)
    export_hf(model, run_dir / "hf")
    return pth, run_dir / "hf"


def loss_history(metrics_path: Path) -> tuple[list[tuple], list[tuple]]:
    """(train, eval) points from metrics.jsonl, with the resume rule of docs/metrics.md: a new
    run_start drops the earlier attempts' events past its resumed_from_step."""
    from trainer.resume import read_events

    train: list[tuple] = []  # (step, tokens_total, loss)
    evals: list[tuple] = []  # (step, train_loss, val_loss)
    for event in read_events(metrics_path):
        kind = event.get("type")
        if kind == "run_start":
            cut = event["resumed_from_step"]
            train = [p for p in train if p[0] <= cut]
            evals = [p for p in evals if p[0] <= cut]
        elif kind == "train":
            train.append((event["step"], event["tokens_total"], event["loss"]))
        elif kind == "eval" and not event["full"]:
            evals.append((event["step"], event["train_loss"], event["val_loss"]))
    return train, evals


def plot_losses(metrics_path: Path, path: Path) -> None:
    """The chapter's plot_losses: losses against steps, with tokens seen on a second x-axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evals = loss_history(metrics_path)
    fig, ax1 = plt.subplots(figsize=(6, 3.5))
    if train:
        ax1.plot([s for s, _, _ in train], [l for _, _, l in train], label="Training loss (step)", alpha=0.4)
    if evals:
        ax1.plot([e[0] for e in evals], [e[1] for e in evals], label="Training loss (eval)")
        ax1.plot([e[0] for e in evals], [e[2] for e in evals], linestyle="-.", label="Validation loss")
    ax1.set_xlabel("Steps")
    ax1.set_ylabel("Loss")
    ax1.legend(loc="upper right")
    if train:
        # A second x-axis for tokens seen, aligned with the steps (as the chapter's plot).
        ax2 = ax1.twiny()
        ax2.plot([t for _, t, _ in train], [l for _, _, l in train], alpha=0)
        ax2.set_xlabel("Tokens seen")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
