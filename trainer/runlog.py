"""What rank 0 tells the user and the dashboard: console progress and metrics.jsonl events.

Other ranks get a RunLog too, whose methods do nothing: the loop calls it unconditionally.
"""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from trainer.metrics import MetricsWriter, mfu


class RunLog:
    def __init__(self, writer: MetricsWriter | None, model_shape: dict, device_name: str | None, precision: str):
        self.writer = writer
        self.active = writer is not None
        self.console = Console(highlight=False, soft_wrap=True)  # log lines stay whole in files
        self.model_shape = model_shape  # non_embedding_params, n_layers, emb_dim
        self.device_name = device_name
        self.precision = precision
        self.started = time.time()
        self.progress: Progress | None = None
        self.task = None
        self.plain_every = 10  # console line every N steps when stdout is not a terminal

    # ---- console ---------------------------------------------------------------------------

    def print(self, message: str) -> None:
        if self.active:
            self.console.print(message)

    def start_progress(self, total_steps: int, done: int) -> None:
        if not self.active or not sys.stdout.isatty():
            return
        self.progress = Progress(
            TextColumn("[bold]step"),
            MofNCompleteColumn(),
            BarColumn(),
            TextColumn("loss {task.fields[loss]}  {task.fields[tps]} tok/s"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.task = self.progress.add_task("train", total=total_steps, completed=done, loss="-", tps="-")
        self.progress.start()

    def stop_progress(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    # ---- events ----------------------------------------------------------------------------

    def event(self, type_: str, **fields) -> None:
        if self.writer is not None:
            self.writer.write(type_, **fields)

    def run_start(self, **fields) -> None:
        self.started = time.time()
        self.event("run_start", **fields)

    def train_step(self, trainer, result) -> None:
        if not self.active:
            return
        p = trainer.progress
        tokens_per_s = result.tokens / result.seconds if result.seconds > 0 else None
        elapsed = time.time() - self.started
        done_this_attempt = p.step - trainer.resumed_from_step
        remaining = trainer.total_steps - p.step
        eta = elapsed / done_this_attempt * remaining if done_this_attempt > 0 else None
        mfu_value = None
        if tokens_per_s is not None:
            mfu_value = mfu(
                tokens_per_s / trainer.dist.world_size,
                seq_len=result.seq_len,
                device_name=self.device_name,
                precision=self.precision,
                **self.model_shape,
            )
        lr = trainer.engine.get_lr()[0]
        grad_norm = trainer.engine.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None else None
        self.event(
            "train",
            step=p.step,
            epoch=p.epoch,
            loss=result.loss,
            lr=lr,
            grad_norm=grad_norm,
            tokens=result.tokens,
            tokens_total=p.tokens_total,
            tokens_per_s=tokens_per_s,
            samples_per_s=result.examples / result.seconds if result.seconds > 0 else None,
            mfu=mfu_value,
            elapsed_s=elapsed,
            eta_s=eta,
        )
        if self.progress is not None:
            self.progress.update(
                self.task, completed=p.step, loss=f"{result.loss:.4f}", tps=f"{tokens_per_s or 0:,.0f}"
            )
        elif p.step % self.plain_every == 0 or p.step == trainer.total_steps:
            self.console.print(
                f"step {p.step}/{trainer.total_steps}  epoch {p.epoch}  loss {result.loss:.4f}  "
                f"{tokens_per_s or 0:,.0f} tok/s  eta {eta or 0:.0f}s"
            )

    def bad_step(self, trainer, result) -> None:
        ranks = ", ".join(str(r) for r in result.bad_ranks)
        self.event(
            "alert",
            step=trainer.progress.step + 1,
            kind="nonfinite_loss",
            message=f"non-finite loss on rank {ranks}; global batch skipped",
            rank=result.bad_ranks[0],
        )
        self.print(f"[yellow]warning:[/] non-finite loss on rank {ranks}; global batch skipped")

    def eval(self, trainer, train_loss, val_loss, full: bool) -> None:
        p = trainer.progress
        self.event("eval", step=p.step, train_loss=train_loss, val_loss=val_loss, full=full)
        if self.active and self.progress is None:
            what = "full val" if full else f"train {train_loss:.3f}  val"
            self.console.print(f"step {p.step}: {what} {val_loss:.3f}")

    def sample(self, trainer) -> None:
        """The chapter's generate_and_print_sample: a greedy response for the first val entry."""
        from trainer.outputs import sample_response

        prompt, response = sample_response(trainer)
        self.event("sample", step=trainer.progress.step, prompt=prompt, response=response)
