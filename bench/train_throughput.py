"""Training throughput: the speed features against a plain baseline, same run, same examples.

The workload is the chapter's: a sample of the training split of instruction-data.json (the first
85% of the entries), `--steps` global batches of `--global-batch` examples drawn at random
(seeded), trained by one process on random weights. Every row trains on exactly these examples,
so every row sees the same non-pad target tokens; only how they are batched and computed changes.
tokens/s = non-pad target tokens / wall time of the timed steps (after `--warmup-steps` untimed
steps on other examples of the split, which also pay for any compilation).

The baseline is the plain way: the model in fp32 with attention written out by hand (masked
softmax, as the chapter's MultiHeadAttention), randomly ordered batches padded to their longest
example, torch.optim.AdamW with its defaults (on a CPU, a loop over the parameters), no compile.
Each further row turns on one more feature, so each feature is measured on (its row) and off (the
row it builds on, "vs row"). Each row's steps are timed in alternation with the baseline's, step
by step, and "vs base" compares the two: other work on a shared machine then slows both alike
(tokens/s, absolute, does move with it: the `load` column is the load average as each row ended).
bf16 runs where the hardware has bf16 matmuls
(GPUs, CPUs with AVX512-BF16 or AMX), else its row is skipped; it rounds, so its losses differ.
The last line, `ratio_vs_baseline`, is the row with every speed feature that applies on this
device over the baseline; the line before it gives the fp32 features alone. Activation
checkpointing trades speed for memory: its row is printed, not counted.

    python bench/train_throughput.py [--model gpt2-small] [--steps 3] [--global-batch 8] ...
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from instruct import read_entries  # noqa: E402
from trainer.gpt2.model import GPT, PRESETS, preset  # noqa: E402
from trainer.gpt2.precision import native_bf16  # noqa: E402
from trainer.gpt2.tokenizer import get_tokenizer  # noqa: E402
from trainer.reporting.mfu import mfu  # noqa: E402
from trainer.training.batches import epoch_batches, epoch_order  # noqa: E402
from trainer.training.data import Example, InstructionDataset, collate, split_entries, tokenize  # noqa: E402
from trainer.training.loss import target_count, token_loss_sum  # noqa: E402
from trainer.training.packing import forward_kwargs, pack, row_multiple_for  # noqa: E402
from testkit.attention import use_hand_written_attention  # noqa: E402
from testkit.compilation import compiled_graphs  # noqa: E402
from testkit.paths import INSTRUCTION_DATA, TOKENIZER_DIR  # noqa: E402


@dataclass(frozen=True)
class Features:
    """One way of training. All False is the baseline."""

    sdpa: bool = False  # scaled_dot_product_attention instead of the hand-written attention
    fused_adamw: bool = False  # torch.optim.AdamW(fused=True): one kernel for all parameters
    group_by_length: bool = False  # trainer.training.batches.group_by_length_order instead of random batches
    packing: bool = False  # trainer.training.packing.pack: no padding but each row's tail
    compile: bool = False  # model.compile(dynamic=True)
    bf16: bool = False  # autocast to bfloat16 (the trainer's equivalent: --precision bf16, DeepSpeed's)
    activation_checkpointing: bool = False  # memory for compute: not a speed feature


@dataclass(frozen=True)
class Row:
    name: str
    features: Features
    builds_on: int | None  # the row this one adds its feature to ("vs row")


def rows() -> list[Row]:
    plain = Features()
    sdpa = replace(plain, sdpa=True)
    fused = replace(sdpa, fused_adamw=True)
    grouped = replace(fused, group_by_length=True)
    # Packing takes the random batches: it removes their padding itself, grouping adds nothing.
    packed = replace(fused, packing=True)
    bf16 = replace(packed, bf16=True)
    compiled = replace(bf16, compile=True)
    return [
        Row("baseline: hand-written attention, random padded batches", plain, None),
        Row("+ SDPA", sdpa, 0),
        Row("+ fused AdamW", fused, 1),
        Row("+ group by length", grouped, 2),
        Row("+ packing (random batches)", packed, 2),
        Row("+ bf16 autocast", bf16, 4),
        Row("+ compile", compiled, 5),
        Row("+ activation checkpointing (memory)", replace(compiled, activation_checkpointing=True), 6),
    ]


@dataclass(frozen=True)
class Settings:
    model: str
    steps: int
    warmup_steps: int
    global_batch: int
    max_length: int
    lr: float
    seed: int


@dataclass
class Batch:
    inputs: torch.Tensor
    targets: torch.Tensor
    forward_kwargs: dict  # positions and attn_mask of packed rows
    tokens: int  # non-pad target tokens
    seq_len: int  # the (padded) row length, for MFU's attention term


def make_batches(examples: list[Example], features: Features, settings: Settings, seed: int, device) -> list[Batch]:
    """The examples cut into global batches (random, or grouped by length), padded or packed."""
    lengths = [len(e.token_ids) for e in examples]
    batches = []
    for indices in epoch_batches(lengths, seed, 1, settings.global_batch, features.group_by_length):
        chosen = [examples[i] for i in indices]
        if features.packing:
            packed = pack(chosen, settings.max_length, row_multiple=row_multiple_for(device))
            inputs, targets, kwargs = packed.inputs, packed.targets, forward_kwargs(packed, device)
        else:
            inputs, targets = collate([e.token_ids for e in chosen], allowed_max_length=settings.max_length)
            kwargs = {}
        batches.append(Batch(inputs.to(device), targets.to(device), kwargs, target_count(targets), inputs.size(1)))
    return batches


def build(features: Features, settings: Settings, device) -> tuple[GPT, torch.optim.Optimizer]:
    torch.manual_seed(settings.seed)  # the same initial weights in every row
    model = GPT(preset(settings.model)).to(device).train()
    if not features.sdpa:
        use_hand_written_attention(model)
    model.activation_checkpointing = features.activation_checkpointing
    if features.compile:
        # In place (nn.Module.compile): parameter names stay as they are. dynamic=True: one graph
        # for every sequence length instead of one compilation per new length.
        model.compile(dynamic=True)
    # The chapter's AdamW (weight decay 0.1); without `fused`, torch loops over the parameters.
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.1, fused=features.fused_adamw or None)
    return model, optimizer


def train_step(model: GPT, optimizer: torch.optim.Optimizer, batch: Batch, features: Features) -> float:
    """One optimizer step on one global batch: the token-mean loss, as trainer/training/loop.py."""
    with torch.autocast(batch.inputs.device.type, dtype=torch.bfloat16, enabled=features.bf16):
        logits = model(batch.inputs, **batch.forward_kwargs)
    loss_sum = token_loss_sum(logits, batch.targets)
    (loss_sum / batch.tokens).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum.item() / batch.tokens  # item(): waits for the device


@dataclass
class Run:
    """A model and optimizer set up one row's way (after its warm-up), and the sample's batches."""

    features: Features
    model: GPT
    optimizer: torch.optim.Optimizer
    batches: list[Batch]  # the sample's global batches, made this row's way

    def step(self, number: int) -> tuple[float, float]:
        """(loss, seconds) of one timed step on the sample's batch `number`."""
        start = time.perf_counter()
        loss = train_step(self.model, self.optimizer, self.batches[number], self.features)
        return loss, time.perf_counter() - start


def prepare(features: Features, sample: list[Example], warmup: list[Example], settings: Settings, device) -> Run:
    """A fresh model (the same initial weights for every row), trained this row's way for the
    untimed warm-up steps on other examples of the split (which also pay for compilation)."""
    model, optimizer = build(features, settings, device)
    for batch in make_batches(warmup, features, settings, settings.seed + 1, device):
        train_step(model, optimizer, batch, features)
    return Run(features, model, optimizer, make_batches(sample, features, settings, settings.seed, device))


@dataclass
class Result:
    row: Row
    batches: list[Batch]
    seconds: float  # wall time of the row's timed steps
    baseline_seconds: float  # wall time of the baseline's steps, interleaved with the row's
    losses: list[float]
    compilations: int  # graphs compiled during the timed steps (recompilations)
    load_average: float  # of the machine over the last minute, when the row finished

    @property
    def tokens(self) -> int:
        return sum(b.tokens for b in self.batches)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    @property
    def vs_baseline(self) -> float:
        """Speed over the baseline's, both timed in alternation: same tokens, same machine load."""
        return self.baseline_seconds / self.seconds

    @property
    def seq_len(self) -> float:
        return sum(b.seq_len for b in self.batches) / len(self.batches)


def measure(row: Row, baseline: Run, sample: list[Example], warmup: list[Example], settings: Settings, device) -> Result:
    """Time the row's steps in alternation with the baseline's, step by step: on a shared machine
    another job's load then weighs on both alike. One row at a time beside the baseline: a
    gpt2-small with its AdamW state takes about 2 GB."""
    run = prepare(row.features, sample, warmup, settings, device)
    graphs = compiled_graphs()
    seconds = baseline_seconds = 0.0
    losses = []
    for number in range(settings.steps):
        baseline_seconds += baseline.step(number)[1]
        loss, step_seconds = run.step(number)
        losses.append(loss)
        seconds += step_seconds
    compilations = compiled_graphs() - graphs
    return Result(row, run.batches, seconds, baseline_seconds, losses, compilations, os.getloadavg()[0])


def chapter_training_examples(data: Path, tokenizer_dir: Path) -> list[Example]:
    train, _, _ = split_entries(read_entries(data))  # the chapter's split: first 85%
    return list(InstructionDataset(tokenize(train, get_tokenizer(tokenizer_dir))))


def synthetic_examples(count: int, length: int, seed: int) -> list[Example]:
    """Random token sequences of exactly `length` tokens: no padding, the full row computed, for
    MFU at a known sequence length (issue 6: gpt2-medium, micro-batch 32, 512 tokens)."""
    generator = torch.Generator().manual_seed(seed)
    return [Example(torch.randint(0, 50256, (length,), generator=generator).tolist(), 0) for _ in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--model", default="gpt2-small", choices=list(PRESETS), help="preset, random init")
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps per row")
    parser.add_argument("--warmup-steps", type=int, default=1, help="untimed steps per row before (compilation, caches)")
    parser.add_argument("--global-batch", type=int, default=8, help="examples per step (the chapter's batch size)")
    parser.add_argument("--max-length", type=int, default=1024, help="tokens per example, and per packed row")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=123, help="seed of the weights and of the sample")
    parser.add_argument("--rows", default=None, help="comma-separated row numbers to run (default: all; 0 is always run)")
    parser.add_argument(
        "--synthetic-length", type=int, default=None,
        help="train on random sequences of exactly this many tokens instead of the chapter's examples "
        "(for MFU at a known length, e.g. --model gpt2-medium --global-batch 32 --synthetic-length 512 --max-length 512)",
    )
    parser.add_argument("--data", type=Path, default=INSTRUCTION_DATA)
    parser.add_argument("--tokenizer-dir", type=Path, default=TOKENIZER_DIR)
    args = parser.parse_args()
    settings = Settings(args.model, args.steps, args.warmup_steps, args.global_batch, args.max_length, args.lr, args.seed)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    needed = (settings.steps + settings.warmup_steps) * settings.global_batch
    if args.synthetic_length is not None:
        examples = synthetic_examples(needed, args.synthetic_length, settings.seed)
    else:
        examples = chapter_training_examples(args.data, args.tokenizer_dir)
    if needed > len(examples):
        parser.error(f"--steps + --warmup-steps need {needed} examples; the training split has {len(examples)}")
    chosen = epoch_order(len(examples), settings.seed, 1)
    sample = [examples[i] for i in chosen[: settings.steps * settings.global_batch]]
    warmup = [examples[i] for i in chosen[settings.steps * settings.global_batch : needed]]
    lengths = sorted(len(e.token_ids) for e in sample)
    print(
        f"model {settings.model} (random init, seed {settings.seed}) on {device_name or 'cpu'}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads, load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{len(sample)} {'synthetic' if args.synthetic_length else 'training'} examples of {lengths[0]}..{lengths[-1]} "
        f"tokens (mean {sum(lengths) / len(lengths):.1f}), "
        f"{settings.steps} timed steps of {settings.global_batch} after {settings.warmup_steps} warm-up steps, fp32 unless said"
    )

    all_rows = rows()
    wanted = set(range(len(all_rows))) if args.rows is None else {0, *(int(r) for r in args.rows.split(","))}
    results: dict[int, Result] = {}
    print(f"measuring #0 {all_rows[0].name}", flush=True)
    baseline = prepare(all_rows[0].features, sample, warmup, settings, device)
    # The baseline's first pass gives its losses; it then keeps stepping beside every other row.
    first_pass = [baseline.step(number) for number in range(settings.steps)]
    seconds = sum(s for _, s in first_pass)
    losses = [loss for loss, _ in first_pass]
    results[0] = Result(all_rows[0], baseline.batches, seconds, seconds, losses, 0, os.getloadavg()[0])
    for number, row in enumerate(all_rows):
        if number and number in wanted and not (row.features.bf16 and not native_bf16(device)):
            print(f"measuring #{number} {row.name}", flush=True)
            results[number] = measure(row, baseline, sample, warmup, settings, device)

    sizes = GPT(preset(settings.model))
    flops_args = (sizes.num_parameters(exclude_position_embeddings=True), sizes.config.n_layers, sizes.config.emb_dim)
    print(
        f"\n{'#':>2}  {'row':<56}{'tokens/s':>10}{'samples/s':>11}{'step s':>8}{'seq':>6}{'MFU':>7}"
        f"{'vs row':>12}{'vs base':>9}{'load':>6}"
    )
    for number, row in enumerate(all_rows):
        if number not in wanted:
            continue
        if number not in results:
            print(f"{number:>2}  {row.name:<56}{'skipped: no bf16 hardware':>35}")
            continue
        result = results[number]
        precision = "bf16" if row.features.bf16 else "fp32"
        utilisation = mfu(result.tokens_per_s, *flops_args, round(result.seq_len), device_name, precision)
        builds_on = results.get(row.builds_on)
        vs_row = f"{result.vs_baseline / builds_on.vs_baseline:.2f}x (#{row.builds_on})" if builds_on else ""
        print(
            f"{number:>2}  {row.name:<56}{result.tokens_per_s:>10.1f}{len(sample) / result.seconds:>11.2f}"
            f"{result.seconds / settings.steps:>8.2f}{result.seq_len:>6.0f}"
            f"{'n/a' if utilisation is None else f'{utilisation:.1%}':>7}{vs_row:>12}"
            f"{result.vs_baseline:>8.2f}x{result.load_average:>6.1f}"
        )

    baseline = results[0]
    print(f"\nevery row: {baseline.tokens} non-pad target tokens of the same {len(sample)} examples")
    for number, result in results.items():
        # Features that keep the math agree step by step; grouping reorders the batches, bf16 rounds.
        if number and not (result.row.features.group_by_length or result.row.features.bf16):
            worst = max(abs(a - b) / abs(b) for a, b in zip(result.losses, baseline.losses))
            print(f"#{number}: per-step losses within {worst:.1e} (relative) of the baseline's")
        if result.row.features.compile:
            print(f"#{number}: {result.compilations} graphs compiled during the timed steps (recompilations)")
    speed_rows = [n for n, r in results.items() if not r.row.features.activation_checkpointing]
    fp32_rows = [n for n in speed_rows if not results[n].row.features.bf16]
    # The row with the most features on; of equals (grouping or packing), the later (packing).
    most_features = lambda numbers: max(numbers, key=lambda n: (sum(vars(results[n].row.features).values()), n))  # noqa: E731
    fp32_best, best = most_features(fp32_rows), most_features(speed_rows)
    print(f"the fp32 speed features (row #{fp32_best}): {results[fp32_best].vs_baseline:.2f}x the baseline")
    print(f"every speed feature that applies on this {device.type}: row #{best}")
    print(f"ratio_vs_baseline: {results[best].vs_baseline:.2f}")


if __name__ == "__main__":
    main()
