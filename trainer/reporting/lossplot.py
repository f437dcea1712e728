"""loss.png: the chapter's plot of the training and validation losses, from metrics.jsonl."""

from __future__ import annotations

from pathlib import Path

from trainer.reporting.metrics import read_events


def loss_history(metrics_path: Path) -> tuple[list[tuple], list[tuple]]:
    """(train, eval) points from metrics.jsonl, with the resume rule of docs/metrics.md: a new
    run_start drops the earlier attempts' events past its resumed_from_step."""
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
