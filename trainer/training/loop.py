"""The training loop: global batches in, optimizer steps, evaluation and events out.

One optimizer step = one global batch. Each rank takes its slice (trainer/training/batches.py), cuts it into
micro-batches, and the step's loss is the mean over every non-ignored target token of the global
batch. DeepSpeed's `engine.backward` would divide by the accumulation steps and its gradient
reduction averages over ranks, so each micro-batch's summed loss is scaled by
world_size / global_tokens and passed with scale_wrt_gas=False: the gradient that reaches the
optimizer is then exactly d(sum of token losses)/dw / global_tokens.

A non-finite loss on any rank skips the whole global batch (no backward, no optimizer step, no
schedule step, no step count): all of a rank's micro-batches are forwarded before the first
backward, so the ranks can agree (one all-reduce) before any gradient exists. With gradient
accumulation this holds the activations of a rank's micro-batches of one step at once.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace

import torch

from instruct import format_input
from trainer.gpt2.generation import GenerationSettings, generate_responses
from trainer.gpt2.tokenizer import EOT_TOKEN_ID
from trainer.training import distributed
from trainer.training.batches import epoch_batches, epoch_order, global_batches, micro_batches, rank_slice
from trainer.training.config import BatchLayout, TrainConfig
from trainer.training.engine import plain_model
from trainer.training.faults import TestFaults
from trainer.training.loss import target_count, token_loss_sum

# The chapter's generate_and_print_sample: a greedy answer of 50 tokens to the first validation entry.
SAMPLE_SETTINGS = GenerationSettings(max_new_tokens=50, batch_size=1)


@dataclass
class Progress:
    """Where the run stands; saved with every checkpoint (plain ints: loads with weights_only)."""

    step: int = 0  # optimizer steps finished
    epoch: int = 1  # the epoch in progress (from 1)
    batch_in_epoch: int = 0  # global batches of this epoch consumed (stepped or skipped)
    tokens_total: int = 0
    bad_steps_in_row: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class StepResult:
    """What one global batch did: the numbers its `train` event (or its alert) reports."""

    loss: float
    tokens: int
    examples: int
    seconds: float
    lr: float  # the rate this step's update used
    grad_norm: float | None = None  # before clipping; None where DeepSpeed computed none
    seq_len: int = 0  # longest padded micro-batch of this rank (for MFU's attention term)
    skipped: bool = False
    bad_ranks: list[int] = field(default_factory=list)


def plan_steps(num_train: int, config: TrainConfig) -> tuple[int, int]:
    """(steps per epoch, total steps): full global batches only, capped by --max-steps."""
    steps_per_epoch = num_train // config.global_batch
    total = steps_per_epoch * config.epochs
    return steps_per_epoch, min(total, config.max_steps) if config.max_steps else total


class StopRequested(Exception):
    """All ranks agreed, at a step boundary, to stop (a signal arrived)."""


class TooManyBadSteps(RuntimeError):
    """--max-bad-steps global batches in a row had a non-finite loss."""


class TrainingLoop:
    """Optimizer steps over the epochs' global batches, evaluations and samples; `run` is the loop.

    `log` (trainer.reporting.runlog.RunLog) gets plain values to report; `stop` (an object with a
    `requested` attribute, trainer.lifecycle.signals.StopSignals) is polled once per step.
    """

    def __init__(self, *, engine, config: TrainConfig, layout: BatchLayout, dist_info, data, heartbeat, log, stop,
                 faults: TestFaults):
        self.engine = engine
        self.config = config
        self.layout = layout
        self.dist = dist_info
        self.data = data  # trainer.lifecycle.pipeline.RunData: datasets, entries, tokenizer
        self.heartbeat = heartbeat
        self.log = log
        self.stop = stop
        self.progress = Progress()
        self.stop_agreed = False  # every rank has seen a stop request (at the same step)
        self.steps_per_epoch, self.total_steps = plan_steps(len(data.train), config)
        self.faults = faults
        self.full_val_loss: tuple[int, float] | None = None  # (step, loss) of the last full evaluation

    # ---- batches -------------------------------------------------------------------------

    def collate(self, dataset, indices: list[int]):
        from trainer.training.data import collate

        examples = [dataset[i] for i in indices]
        return collate(
            [e.token_ids for e in examples],
            allowed_max_length=self.config.max_length,
            prompt_lengths=[e.prompt_length for e in examples] if self.config.mask_prompt else None,
        )

    def training_micro_batch(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(inputs, targets, forward kwargs) of one training micro-batch: padded, or packed
        (--packing: fewer rows, same targets; the kwargs carry positions and the mask)."""
        if not self.config.packing:
            return (*self.collate(self.data.train, indices), {})
        from trainer.training.packing import forward_kwargs, pack, row_multiple_for

        device = self.dist.device
        packed = pack([self.data.train[i] for i in indices], self.config.max_length,
                      self.config.mask_prompt, row_multiple_for(device))
        return packed.inputs, packed.targets, forward_kwargs(packed, device, self.config.dropout)

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.dist.device.type == "cuda":
            return tensor.pin_memory().to(self.dist.device, non_blocking=True)
        return tensor

    # ---- one optimizer step ----------------------------------------------------------------

    def train_step(self, batch: list[int]) -> StepResult:
        start = time.perf_counter()
        engine, hb = self.engine, self.heartbeat
        engine.train()
        hb.phase = "data"
        self.faults.maybe_stall(self.dist.rank, self.progress.step + 1)
        lr = engine.get_lr()[0]  # the rate this step's update uses: the schedule steps with it
        mine = rank_slice(batch, self.dist.rank, self.dist.world_size)
        micros = [self.training_micro_batch(m) for m in micro_batches(mine, self.layout.micro_batch)]
        local_tokens = sum(target_count(t) for _, t, _ in micros)

        hb.phase = "forward"
        loss_sums = []
        for inputs, targets, forward_kwargs in micros:
            logits = engine(self.to_device(inputs), **forward_kwargs)
            loss_sums.append(token_loss_sum(logits, self.to_device(targets)))
        local_sum = float(sum(l.detach() for l in loss_sums))
        if self.faults.nan_at == (self.dist.rank, self.progress.epoch, self.progress.batch_in_epoch):
            loss_sums[0] = loss_sums[0] * float("nan")
            local_sum = float("nan")
        bad = 0.0 if math.isfinite(local_sum) else 1.0
        # One all-reduce: global token count, global loss sum, whether any rank was asked to stop
        # (trainer/lifecycle/signals.py), and which ranks saw a non-finite loss. It is the first
        # collective of the step: a rank stuck before it shows as not in a collective phase.
        hb.phase = "backward"
        flags = [0.0] * self.dist.world_size
        flags[self.dist.rank] = bad
        stop = 1.0 if self.stop.requested else 0.0
        totals = distributed.all_reduce_sum(
            [float(local_tokens), 0.0 if bad else local_sum, stop, *flags], self.dist.device
        )
        global_tokens, global_sum, rank_flags = int(totals[0]), totals[1], totals[3:]
        self.stop_agreed = self.stop_agreed or totals[2] > 0
        bad_ranks = [r for r, f in enumerate(rank_flags) if f > 0]
        if bad_ranks:
            del loss_sums, micros
            return StepResult(float("nan"), global_tokens, len(batch), time.perf_counter() - start, lr,
                              skipped=True, bad_ranks=bad_ranks)

        scale = self.dist.world_size / max(global_tokens, 1)
        for loss_sum in loss_sums:
            engine.backward(loss_sum * scale, scale_wrt_gas=False)
            hb.phase = "step"
            engine.step()  # DeepSpeed steps the optimizer only at the accumulation boundary
            hb.phase = "backward"
        hb.phase = "idle"
        if self.dist.device.type == "cuda":
            torch.cuda.synchronize(self.dist.device)  # the step's time includes its queued kernels
        seq_len = max(inputs.size(1) for inputs, _, _ in micros)
        grad_norm = engine.get_global_grad_norm()
        return StepResult(
            global_sum / max(global_tokens, 1), global_tokens, len(batch), time.perf_counter() - start, lr,
            grad_norm=float(grad_norm) if grad_norm is not None else None, seq_len=seq_len,
        )

    # ---- evaluation ------------------------------------------------------------------------

    @torch.no_grad()
    def loss_over(self, dataset, batches: list[list[int]], stoppable: bool = False) -> float:
        """Token-mean loss over the given global batches, sharded across ranks. `stoppable`: before
        each global batch the ranks agree (one all-reduce) whether any was asked to stop, and then
        raise StopRequested together."""
        engine = self.engine
        engine.eval()
        zero3 = engine.zero_optimization_stage() == 3
        local_sum, local_tokens = 0.0, 0
        for batch in batches:
            if stoppable and distributed.all_reduce_sum([float(self.stop.requested is not None)], self.dist.device)[0]:
                engine.train()
                raise StopRequested()
            mine = rank_slice(batch, self.dist.rank, self.dist.world_size)
            chunks = micro_batches(mine, self.layout.micro_batch)
            # Under ZeRO-3 every forward gathers parameters collectively: all ranks run as many
            # forwards as the rank with the most examples, padding with a one-token dummy.
            most = math.ceil(math.ceil(len(batch) / self.dist.world_size) / self.layout.micro_batch)
            if zero3:
                chunks += [[]] * (most - len(chunks))
            for chunk in chunks:
                if not chunk:
                    engine(self.to_device(torch.full((1, 1), EOT_TOKEN_ID, dtype=torch.long)))
                    continue
                inputs, targets = self.collate(dataset, chunk)
                logits = engine(self.to_device(inputs))
                local_sum += float(token_loss_sum(logits, self.to_device(targets)))
                local_tokens += target_count(targets)
        total_sum, total_tokens = distributed.all_reduce_sum([local_sum, float(local_tokens)], self.dist.device)
        engine.train()
        return total_sum / max(total_tokens, 1)

    def evaluate(self, full: bool = False, stoppable: bool = False) -> tuple[float | None, float]:
        """The chapter's evaluate_model over `eval_batches` batches, or the whole validation split."""
        self.heartbeat.phase = "eval"
        size = self.layout.global_batch
        val_batches = global_batches(list(range(len(self.data.val))), size, drop_last=False)
        if full:
            val_loss = self.loss_over(self.data.val, val_batches, stoppable)
            self.full_val_loss = (self.progress.step, val_loss)
            return None, val_loss
        n = self.config.eval_batches
        order = epoch_order(len(self.data.train), self.config.seed, self.progress.epoch)
        train_loss = self.loss_over(self.data.train, global_batches(order, size)[:n])
        return train_loss, self.loss_over(self.data.val, val_batches[:n])

    # ---- the loop --------------------------------------------------------------------------

    def final_evaluation(self) -> float:
        """The whole validation split's loss with the final weights, logged as a full `eval`. A full
        evaluation at this step already (an epoch end, or logged by an earlier attempt) is reused.
        A stop on any rank meanwhile raises StopRequested on every rank."""
        if self.full_val_loss is not None and self.full_val_loss[0] == self.progress.step:
            return self.full_val_loss[1]
        self.heartbeat.phase = "eval"
        self.faults.maybe_hold(self.dist.rank, "final_eval", lambda: self.stop.requested is not None)
        _, val_loss = self.evaluate(full=True, stoppable=True)
        self.log.eval(self.progress.step, None, val_loss, full=True)
        self.heartbeat.phase = "idle"
        return val_loss

    def sample(self) -> tuple[str, str | None]:
        """The chapter's generate_and_print_sample: the first validation entry's prompt and, on
        rank 0, its greedy response. Collective under ZeRO-3 (the weights are gathered): every
        rank calls it, and they meet once rank 0 has generated."""
        self.heartbeat.phase = "generate"
        model = plain_model(self.engine)
        entry = self.data.val_entries[0]
        response = None
        if self.dist.is_main:
            [response] = generate_responses(model, self.data.tokenizer, [entry],
                                            replace(SAMPLE_SETTINGS, compile=self.config.compile))
        distributed.barrier()
        self.heartbeat.phase = "idle"
        return format_input(entry), response

    def should_eval(self, step: int) -> bool:
        # As the chapter: after the first step, then every eval_every steps.
        return self.config.eval_every > 0 and (step - 1) % self.config.eval_every == 0

    def evaluation_steps(self) -> list[int]:
        """Every step the run evaluates at: the chapter's, each epoch's end and the last step (the
        final evaluation)."""
        steps = range(1, self.total_steps + 1)
        epoch_ends = steps[self.steps_per_epoch - 1::self.steps_per_epoch] if self.steps_per_epoch else []
        return sorted({s for s in steps if self.should_eval(s)} | set(epoch_ends) | set(steps[-1:]))

    def run(self, on_step_end=None, on_epoch_end=None) -> None:
        """Train until total_steps or the last epoch. Hooks: on_step_end(result), on_epoch_end()."""
        config, progress = self.config, self.progress
        while progress.epoch <= config.epochs and progress.step < self.total_steps:
            batches = epoch_batches(self.data.train.lengths, config.seed, progress.epoch, self.layout.global_batch,
                                    config.group_by_length)
            while progress.batch_in_epoch < len(batches) and progress.step < self.total_steps:
                result = self.train_step(batches[progress.batch_in_epoch])
                progress.batch_in_epoch += 1
                if result.skipped:
                    self.skip(result)
                else:
                    self.record(result)
                if on_step_end:
                    on_step_end(result)
                if self.stop_agreed:
                    raise StopRequested()
            if progress.batch_in_epoch >= len(batches):
                _, val_loss = self.evaluate(full=True)
                self.log.eval(progress.step, None, val_loss, full=True)
                progress.epoch += 1
                progress.batch_in_epoch = 0
                if on_epoch_end:
                    on_epoch_end()
        self.heartbeat.phase = "idle"

    def skip(self, result: StepResult) -> None:
        """A global batch with a non-finite loss: no step; too many in a row end the run."""
        progress = self.progress
        progress.bad_steps_in_row += 1
        self.log.bad_step(progress.step, result.bad_ranks)
        if progress.bad_steps_in_row >= self.config.max_bad_steps:
            raise TooManyBadSteps(
                f"{progress.bad_steps_in_row} global batches in a row had a non-finite loss "
                f"(--max-bad-steps {self.config.max_bad_steps})"
            )

    def record(self, result: StepResult) -> None:
        """A finished optimizer step: count it, report it, and evaluate when it is time."""
        progress = self.progress
        progress.bad_steps_in_row = 0
        progress.step += 1
        progress.tokens_total += result.tokens
        self.heartbeat.step = progress.step
        self.log.train_step(progress.step, progress.epoch, progress.tokens_total, result)
        if self.should_eval(progress.step):
            train_loss, val_loss = self.evaluate()
            self.log.eval(progress.step, train_loss, val_loss, full=False)
            prompt, response = self.sample()
            self.log.sample(progress.step, prompt, response)
