"""GGUF agreement: llama.cpp running each --gguf-type against f32, and f32 against PyTorch, same run.

    python bench/gguf_agreement.py [--weights PATH [--model PRESET]] [--shape tiny] [--num-prompts 110]

The model is --weights (any GPT-2 the project reads: a fine-tuned model gives the figures that
matter for it), or else a randomised GPT-2 of --shape: every tensor random, LayerNorms and biases
included (testkit.llamacpp.randomised_gpt, the tests' model), seeded. It is exported with
trainer.gpt2.gguf_export in f32, f16 and q8_0, and llama.cpp (llama-cpp-python, in this process)
answers the chapter's test prompts greedily from each file. The prompts are format_prompt(entry),
as the chat template renders them.

Each row compares continuations of at most --max-new-tokens with a reference, prompt by prompt:

- prefix: new tokens that match before the first difference, mean over the prompts;
- same: prompts whose whole continuation matches;
- top-1: prompts whose first new token (the argmax of the first step's logits) matches;
- max |dlogit|: the largest difference between the first step's logits.

The baseline row is the f32 GGUF against PyTorch (trainer.gpt2.generation.generate, fp32); the f16
and q8_0 rows are against the f32 GGUF. `ratio_vs_baseline` is q8_0's prefix over the baseline's.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from instruct import format_prompt, read_entries  # noqa: E402
from testkit.llamacpp import Continuation, first_difference, greedy, load, randomised_gpt  # noqa: E402
from testkit.paths import INSTRUCTION_DATA, TOKENIZER_DIR  # noqa: E402
from trainer.gpt2.generation import GenerationSettings, generate  # noqa: E402
from trainer.gpt2.gguf_export import GGUF_TYPES, check_gguf, export_gguf  # noqa: E402
from trainer.gpt2.model import PRESETS, preset  # noqa: E402
from trainer.gpt2.tokenizer import get_tokenizer  # noqa: E402
from trainer.gpt2.weights import describe, load_model  # noqa: E402
from trainer.training.data import split_entries  # noqa: E402


@dataclass(frozen=True)
class Agreement:
    name: str
    prompts: int
    prefix: float  # mean matching new tokens before the first difference
    same: int  # whole continuations equal
    top1: int  # first new tokens equal
    max_logit_diff: float  # over the first step's logits
    megabytes: float  # of the GGUF (0 for PyTorch)


def agreement(name: str, runs: list[Continuation], reference: list[Continuation], megabytes: float) -> Agreement:
    prefixes = []
    for run, ref in zip(runs, reference):
        at = first_difference(run.tokens, ref.tokens)
        prefixes.append(len(ref.tokens) if at is None else at)
    return Agreement(
        name=name,
        prompts=len(runs),
        prefix=float(np.mean(prefixes)),
        same=sum(run.tokens == ref.tokens for run, ref in zip(runs, reference)),
        top1=sum(int(run.logits[0].argmax()) == int(ref.logits[0].argmax()) for run, ref in zip(runs, reference)),
        max_logit_diff=max(float(np.abs(run.logits[0] - ref.logits[0]).max()) for run, ref in zip(runs, reference)),
        megabytes=megabytes,
    )


def pytorch_runs(model, prompts: list[list[int]], max_new_tokens: int) -> list[Continuation]:
    """trainer.gpt2.generation.generate's tokens, and the first step's logits, per prompt."""
    tokens = generate(model, prompts, GenerationSettings(max_new_tokens=max_new_tokens, batch_size=len(prompts)))
    context = model.config.context_length
    with torch.no_grad():
        firsts = [model(torch.tensor([p[-(context - 1):]]))[0, -1].numpy() for p in prompts]
    return [Continuation(t, [first]) for t, first in zip(tokens, firsts)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default=None, help="a GPT-2 this project reads (default: a randomised one)")
    parser.add_argument("--model", default=None, choices=list(PRESETS), help="with a bare .pth: its preset")
    parser.add_argument("--shape", default="tiny", choices=list(PRESETS), help="of the randomised model (default: tiny)")
    parser.add_argument("--seed", type=int, default=0, help="of the randomised model (default: 0)")
    parser.add_argument("--num-prompts", type=int, default=110, help="test prompts (default: all 110)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="per prompt (default: 32)")
    parser.add_argument("--data", type=Path, default=INSTRUCTION_DATA, help="the chapter's instruction-data.json")
    parser.add_argument("--tokenizer-dir", type=Path, default=TOKENIZER_DIR, help="GPT-2's encoder.json and vocab.bpe")
    args = parser.parse_args()

    tokenizer = get_tokenizer(args.tokenizer_dir)
    if args.weights:
        model, _ = load_model(args.model, args.weights)
        model.eval()
        source = args.weights
    else:
        model = randomised_gpt(preset(args.shape), seed=args.seed)
        source = f"randomised {args.shape} (seed {args.seed})"
    entries = read_entries(args.data)
    prompts = [tokenizer.encode(format_prompt(e)) for e in split_entries(entries)[1][: args.num_prompts]]
    print(f"model: {source}, {describe(model.config)}")
    print(f"{len(prompts)} test prompts, {args.max_new_tokens} new tokens, greedy; "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads")

    start = time.perf_counter()
    reference = pytorch_runs(model, prompts, args.max_new_tokens)
    print(f"pytorch: {time.perf_counter() - start:.1f} s", flush=True)
    runs, sizes = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for gguf_type in GGUF_TYPES:
            try:
                check_gguf(model.config, tokenizer, gguf_type)
            except ValueError as e:
                print(f"{gguf_type}: skipped ({e})")
                continue
            path = export_gguf(model, tokenizer, Path(tmp) / gguf_type, gguf_type)
            sizes[gguf_type] = path.stat().st_size / 2**20
            llm = load(path, model.config.context_length)
            start = time.perf_counter()
            runs[gguf_type] = [greedy(llm, prompt, args.max_new_tokens) for prompt in prompts]
            print(f"{gguf_type}: {time.perf_counter() - start:.1f} s in llama.cpp", flush=True)
            del llm

    rows = [agreement("baseline: f32 GGUF vs PyTorch", runs["f32"], reference, sizes["f32"])]
    rows += [agreement(f"{t} vs f32 GGUF", runs[t], runs["f32"], sizes[t]) for t in runs if t != "f32"]
    print(f"\n{'row':<32}{'MiB':>8}{'prefix':>9}{'same':>10}{'top-1':>10}{'max |dlogit|':>14}")
    for row in rows:
        print(f"{row.name:<32}{row.megabytes:>8.1f}{row.prefix:>9.2f}{row.same:>6}/{row.prompts:<3}"
              f"{row.top1:>6}/{row.prompts:<3}{row.max_logit_diff:>14.2e}")
    print(f"ratio_vs_baseline: {rows[-1].prefix / rows[0].prefix:.2f}")


if __name__ == "__main__":
    main()
