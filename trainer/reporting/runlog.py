"""What rank 0 tells the user and the dashboard: console lines, a progress bar, metrics.jsonl events.

Every method takes plain values and only reports them: none runs a collective or generation. On
the other ranks the RunLog has no writer and its methods do nothing, so callers call it
unconditionally.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from trainer.reporting.events import Alert, Eval, Event, Sample, Train
from trainer.reporting.metrics import MetricsWriter
from trainer.reporting.mfu import mfu

PLAIN_EVERY = 10  # a console line every N steps when stdout is not a terminal (a log file)


@dataclass(frozen=True)
class Throughput:
    """What MFU needs besides the step's own numbers (docs/metrics.md, "MFU")."""

    non_embedding_params: int
    n_layers: int
    emb_dim: int
    world_size: int
    device_name: str | None  # None on a CPU: no known peak, MFU is null
    precision: str


class RunLog:
    def __init__(self, writer: MetricsWriter | None, throughput: Throughput, notifier=None, run_id: str = ""):
        self.writer = writer
        self.notifier = notifier  # trainer.reporting.notify.Notifier (--notify-env), on rank 0
        self.run_id = run_id
        self.active = writer is not None
        self.console = Console(highlight=False, soft_wrap=True)  # log lines stay whole in files
        self.throughput = throughput
        self.started = time.time()  # this attempt's start: elapsed_s and the ETA count from it
        self.total_steps = 0
        self.resumed_from_step = 0
        self.bar: Progress | None = None
        self.task = None

    # ---- events and console ------------------------------------------------------------------

    def event(self, event: Event) -> None:
        if self.writer is not None:
            self.writer.write(event)
        if self.notifier is not None:
            self.notifier.notify(self.run_id, event)

    def print(self, message: str) -> None:
        if self.active:
            self.console.print(message)

    def warning(self, step: int, message: str) -> None:
        """A `warning` alert and the same line on the console."""
        self.event(Alert(step=step, kind="warning", message=message, rank=None))
        self.print(f"[yellow]warning:[/] {message}")

    # ---- training ----------------------------------------------------------------------------

    def start_training(self, total_steps: int, resumed_from_step: int) -> None:
        """From here on steps are counted against total_steps (the ETA), with a progress bar on a
        terminal."""
        self.started = time.time()
        self.total_steps = total_steps
        self.resumed_from_step = resumed_from_step
        if not self.active or not sys.stdout.isatty():
            return
        self.bar = Progress(
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
        self.task = self.bar.add_task("train", total=total_steps, completed=resumed_from_step, loss="-", tps="-")
        self.bar.start()

    def stop_training(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def train_step(self, step: int, epoch: int, tokens_total: int, result) -> None:
        """One finished optimizer step (result: trainer.training.loop.StepResult)."""
        if not self.active:
            return
        seconds = result.seconds
        tokens_per_s = result.tokens / seconds if seconds > 0 else None
        elapsed = time.time() - self.started
        done_this_attempt = step - self.resumed_from_step
        eta = elapsed / done_this_attempt * (self.total_steps - step) if done_this_attempt > 0 else None
        t = self.throughput
        utilisation = None
        if tokens_per_s is not None:
            utilisation = mfu(tokens_per_s / t.world_size, t.non_embedding_params, t.n_layers, t.emb_dim,
                              result.seq_len, t.device_name, t.precision)
        self.event(Train(
            step=step, epoch=epoch, loss=result.loss, lr=result.lr, grad_norm=result.grad_norm,
            tokens=result.tokens, tokens_total=tokens_total, tokens_per_s=tokens_per_s,
            samples_per_s=result.examples / seconds if seconds > 0 else None, mfu=utilisation,
            elapsed_s=elapsed, eta_s=eta,
        ))
        if self.bar is not None:
            self.bar.update(self.task, completed=step, loss=f"{result.loss:.4f}", tps=f"{tokens_per_s or 0:,.0f}")
        elif step % PLAIN_EVERY == 0 or step == self.total_steps:
            self.console.print(
                f"step {step}/{self.total_steps}  epoch {epoch}  loss {result.loss:.4f}  "
                f"{tokens_per_s or 0:,.0f} tok/s  eta {eta or 0:.0f}s"
            )

    def bad_step(self, step: int, bad_ranks: list[int]) -> None:
        """A global batch skipped for a non-finite loss; `step` is the last finished step."""
        ranks = ", ".join(map(str, bad_ranks))
        message = f"non-finite loss on rank {ranks}; global batch skipped"
        self.event(Alert(step=step, kind="nonfinite_loss", message=message, rank=bad_ranks[0]))
        self.print(f"[yellow]warning:[/] {message}")

    def eval(self, step: int, train_loss: float | None, val_loss: float, full: bool) -> None:
        self.event(Eval(step=step, train_loss=train_loss, val_loss=val_loss, full=full))
        if self.active and self.bar is None:
            what = "full val" if full else f"train {train_loss:.3f}  val"
            self.console.print(f"step {step}: {what} {val_loss:.3f}")

    def sample(self, step: int, prompt: str, response: str | None) -> None:
        if response is not None:
            self.event(Sample(step=step, prompt=prompt, response=response))
