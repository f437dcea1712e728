"""Generation throughput: batched KV-cache generation against the chapter's way, same run.

The workload is the chapter's: responses to the 110 test prompts of instruction-data.json (the
entries after the 85% training split), prompted with format_input as ch07 does. The baseline is
the chapter's loop, one prompt at a time, the whole sequence recomputed for every new token
(trainer.generate.generate_recompute); it is slow, so `--baseline-prompts` times it on the first
few prompts only and reports its tokens/s. Both sides use the same weights (random init, seeded),
the same prompts and the same max_new_tokens, greedily; tokens/s = new tokens / wall time.

    python bench/generate_throughput.py [--model gpt2-small] [--max-new-tokens 32] ...

Each row of ROWS is one way of generating; a speed feature (compile, CUDA graphs, bf16) adds a
row. The last line, `ratio_vs_baseline`, is the last row's tokens/s over the baseline's.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from instruct import format_input
from trainer.generate import generate, generate_recompute, length_sorted_batches
from trainer.model import GPT, PRESETS, preset
from trainer.tokenizer import get_tokenizer

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("GPT2_INSTRUCT_SHARED", REPO.parent / "shared"))


@dataclass(frozen=True)
class Settings:
    model: str
    max_new_tokens: int
    num_prompts: int
    batch_size: int
    baseline_prompts: int
    seed: int


def recompute_one_at_a_time(model: GPT, prompts: list[list[int]], settings: Settings) -> list[list[int]]:
    return [generate_recompute(model, prompt, max_new_tokens=settings.max_new_tokens) for prompt in prompts]


def kv_cache_batched(model: GPT, prompts: list[list[int]], settings: Settings) -> list[list[int]]:
    outputs: list[list[int]] = [[] for _ in prompts]
    for indices in length_sorted_batches(prompts, settings.batch_size):
        batch = generate(model, [prompts[i] for i in indices], max_new_tokens=settings.max_new_tokens)
        for i, tokens in zip(indices, batch):
            outputs[i] = tokens
    return outputs


# (name, how it generates); the first is the baseline, timed on the first --baseline-prompts.
ROWS: list[tuple[str, Callable[[GPT, list[list[int]], Settings], list[list[int]]]]] = [
    ("recompute, one prompt at a time (chapter)", recompute_one_at_a_time),
    ("kv-cache, batched", kv_cache_batched),
]


@dataclass(frozen=True)
class Timing:
    name: str
    prompts: int
    new_tokens: int
    seconds: float
    outputs: list[list[int]]

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds


def time_row(name, run, model, prompts, settings) -> Timing:
    run(model, prompts[:2], Settings(**{**vars(settings), "max_new_tokens": 2}))  # warm-up
    start = time.perf_counter()
    outputs = run(model, prompts, settings)  # returns Python lists: the device has finished
    seconds = time.perf_counter() - start
    return Timing(name, len(prompts), sum(len(tokens) for tokens in outputs), seconds, outputs)


def test_prompts(data: Path, tokenizer_dir: Path, num_prompts: int) -> list[list[int]]:
    """The chapter's test split (ch07: train 85%, test 10%, validation the rest), tokenized."""
    entries = json.loads(data.read_text())
    train_portion, test_portion = int(len(entries) * 0.85), int(len(entries) * 0.1)
    test_entries = entries[train_portion : train_portion + test_portion][:num_prompts]
    tokenizer = get_tokenizer(tokenizer_dir)
    return [tokenizer.encode(format_input(entry), allowed_special={"<|endoftext|>"}) for entry in test_entries]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gpt2-small", choices=list(PRESETS), help="preset, random init (default: gpt2-small)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="per prompt (default: 32; the chapter uses 256)")
    parser.add_argument("--num-prompts", type=int, default=110, help="test prompts to answer (default: all 110)")
    parser.add_argument("--batch-size", type=int, default=32, help="prompts per batch (default: 32)")
    parser.add_argument("--baseline-prompts", type=int, default=2, help="prompts the slow baseline is timed on (default: 2)")
    parser.add_argument("--seed", type=int, default=123, help="seed of the random weights (default: 123)")
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "instruction-data.json", help="the chapter's instruction-data.json")
    parser.add_argument("--tokenizer-dir", type=Path, default=SHARED / "tokenizer" / "gpt2", help="GPT-2's encoder.json and vocab.bpe")
    args = parser.parse_args()
    settings = Settings(args.model, args.max_new_tokens, args.num_prompts, args.batch_size, args.baseline_prompts, args.seed)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    prompts = test_prompts(args.data, args.tokenizer_dir, settings.num_prompts)
    torch.manual_seed(settings.seed)
    model = GPT(preset(settings.model)).to(device).eval()
    lengths = sorted(len(p) for p in prompts)
    print(
        f"model {settings.model} (random init, seed {settings.seed}) on {device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads"
    )
    print(
        f"{len(prompts)} test prompts of {lengths[0]}..{lengths[-1]} tokens (median {lengths[len(lengths) // 2]}), "
        f"max_new_tokens {settings.max_new_tokens}, batch_size {settings.batch_size}, greedy"
    )

    timings = []
    for row, (name, run) in enumerate(ROWS):
        row_prompts = prompts[: settings.baseline_prompts] if row == 0 else prompts
        timings.append(time_row(name, run, model, row_prompts, settings))
    baseline = timings[0]

    print(f"\n{'method':<44}{'prompts':>8}{'new tokens':>12}{'seconds':>10}{'tokens/s':>11}{'vs baseline':>13}")
    for t in timings:
        print(
            f"{t.name:<44}{t.prompts:>8}{t.new_tokens:>12}{t.seconds:>10.2f}{t.tokens_per_s:>11.1f}"
            f"{t.tokens_per_s / baseline.tokens_per_s:>12.2f}x"
        )
    for t in timings[1:]:
        same = sum(a == b for a, b in zip(t.outputs, baseline.outputs))
        print(f"{t.name}: same tokens as the baseline on {same}/{baseline.prompts} prompts")
    print(f"ratio_vs_baseline: {timings[-1].tokens_per_s / baseline.tokens_per_s:.2f}")


if __name__ == "__main__":
    main()
