"""Generation throughput: batched KV-cache generation against the chapter's way, same run.

The workload is the chapter's: responses to the 110 test prompts of instruction-data.json (the
entries after the 85% training split), prompted with format_input as ch07 does. The baseline is
the chapter's loop, one prompt at a time, the whole sequence recomputed for every new token
(trainer.gpt2.generation.generate_recompute); it is slow, so `--baseline-prompts` times it on the first
few prompts only and reports its tokens/s. Both sides use the same weights (random init, seeded),
the same prompts and the same max_new_tokens, greedily; tokens/s = new tokens / wall time.

    python bench/generate_throughput.py [--model gpt2-small] [--max-new-tokens 32] ...

Each row of ROWS is one way of generating. Row 1 is batched KV-cache generation in fp32; each
speed feature adds a row, on against that same row 1 and against the same baseline:

- bf16: a bf16 copy of the weights (so the KV cache is bf16 too), only where the hardware has bf16
  matmuls (native_bf16). On this project's CPU (AVX512-BF16) casting the model was faster than
  torch.autocast around fp32 weights: 32 prompts x 8 new tokens on gpt2-small took 1.2-1.3 s cast,
  1.8 s autocast, 2.6 s fp32 (autocast converts the weights again at every matmul).
- compile: GenerationSettings(compile=True), which runs every decode step through torch.compile with static
  shapes (trainer.gpt2.generation.compiled_decode_one_token; the cache length rounded up to a power of
  two). On a GPU that also records the step as a CUDA graph (mode "reduce-overhead"). The warm-up
  run (the whole workload once) compiles, is not counted in tokens/s, and is printed; so are the
  graphs compiled while timed (recompilations: there should be none).

Each feature row prints how many prompts get the same greedy tokens as row 1 (bf16 rounds, so
it may differ). The last line, `ratio_vs_baseline`, is the tokens/s of the last row that ran over
the baseline's; by default that is every feature that applies on the device together.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from instruct import format_input  # noqa: E402
from trainer.gpt2.generation import GenerationSettings, generate, generate_recompute, length_sorted_batches  # noqa: E402
from trainer.gpt2.model import GPT, PRESETS, preset  # noqa: E402
from trainer.gpt2.precision import native_bf16  # noqa: E402
from trainer.gpt2.tokenizer import ENDOFTEXT, get_tokenizer  # noqa: E402
from testkit.compilation import compiled_graphs  # noqa: E402
from testkit.paths import INSTRUCTION_DATA, TOKENIZER_DIR  # noqa: E402


@dataclass(frozen=True)
class Settings:
    model: str
    max_new_tokens: int
    num_prompts: int
    batch_size: int
    baseline_prompts: int
    seed: int


@dataclass(frozen=True)
class Features:
    bf16: bool = False  # a bf16 copy of the weights (and so a bf16 KV cache)
    compile: bool = False  # GenerationSettings(compile=True): compiled decode step, CUDA graphs on a GPU


def recompute_one_at_a_time(model: GPT, prompts: list[list[int]], settings: Settings, features: Features) -> list[list[int]]:
    generation = GenerationSettings(max_new_tokens=settings.max_new_tokens)
    return [generate_recompute(model, prompt, generation) for prompt in prompts]


def kv_cache_batched(model: GPT, prompts: list[list[int]], settings: Settings, features: Features) -> list[list[int]]:
    outputs: list[list[int]] = [[] for _ in prompts]
    generation = GenerationSettings(max_new_tokens=settings.max_new_tokens, compile=features.compile)
    for indices in length_sorted_batches([len(p) for p in prompts], settings.batch_size):
        batch = generate(model, [prompts[i] for i in indices], generation)
        for i, tokens in zip(indices, batch):
            outputs[i] = tokens
    return outputs


@dataclass(frozen=True)
class Row:
    name: str
    run: Callable[[GPT, list[list[int]], Settings, Features], list[list[int]]]
    features: Features


# The first row is the baseline, timed on the first --baseline-prompts; row 1 is what the features
# are compared with; the last row has every feature (the best combination on this CPU).
ROWS: list[Row] = [
    Row("recompute, one prompt at a time (chapter)", recompute_one_at_a_time, Features()),
    Row("kv-cache, batched (fp32)", kv_cache_batched, Features()),
    Row("+ bf16 weights", kv_cache_batched, Features(bf16=True)),
    Row("+ compiled decode step", kv_cache_batched, Features(compile=True)),
    Row("+ bf16 weights + compiled decode step", kv_cache_batched, Features(bf16=True, compile=True)),
]


def with_features(model: GPT, features: Features) -> GPT:
    """The model as the row runs it; the fp32 model itself is left as it is for the other rows."""
    if features.bf16:
        model = copy.deepcopy(model).to(torch.bfloat16)
    if features.compile:
        torch._dynamo.reset()  # each compiled row compiles afresh: its compile time is its own
    return model


@dataclass(frozen=True)
class Timing:
    row: Row
    prompts: int
    new_tokens: int
    seconds: float
    warmup_seconds: float  # includes the compilation of a compiled row
    graphs_warmup: int  # graphs compiled in the warm-up
    graphs_timed: int  # graphs compiled while timed: recompilations
    outputs: list[list[int]]

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds


def time_row(row: Row, model: GPT, prompts: list[list[int]], settings: Settings) -> Timing:
    model = with_features(model, row.features)
    graphs = compiled_graphs()
    start = time.perf_counter()
    # Warm-up. A compiled row runs the whole workload once: its decode step is compiled for each
    # batch size and cache length it meets. An eager row needs a short one.
    if row.features.compile:
        row.run(model, prompts, settings, row.features)
    else:
        row.run(model, prompts[:2], Settings(**{**vars(settings), "max_new_tokens": 2}), row.features)
    warmup_seconds = time.perf_counter() - start
    graphs_warmup = compiled_graphs() - graphs
    start = time.perf_counter()
    outputs = row.run(model, prompts, settings, row.features)  # returns Python lists: the device has finished
    seconds = time.perf_counter() - start
    graphs_timed = compiled_graphs() - graphs - graphs_warmup
    new_tokens = sum(len(tokens) for tokens in outputs)
    return Timing(row, len(prompts), new_tokens, seconds, warmup_seconds, graphs_warmup, graphs_timed, outputs)


def test_prompts(data: Path, tokenizer_dir: Path, num_prompts: int) -> list[list[int]]:
    """The chapter's test split (ch07: train 85%, test 10%, validation the rest), tokenized."""
    entries = json.loads(data.read_text())
    train_portion, test_portion = int(len(entries) * 0.85), int(len(entries) * 0.1)
    test_entries = entries[train_portion : train_portion + test_portion][:num_prompts]
    tokenizer = get_tokenizer(tokenizer_dir)
    return [tokenizer.encode(format_input(entry), allowed_special={ENDOFTEXT}) for entry in test_entries]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gpt2-small", choices=list(PRESETS), help="preset, random init (default: gpt2-small)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="per prompt (default: 32; the chapter uses 256)")
    parser.add_argument("--num-prompts", type=int, default=110, help="test prompts to answer (default: all 110)")
    parser.add_argument("--batch-size", type=int, default=32, help="prompts per batch (default: 32)")
    parser.add_argument("--baseline-prompts", type=int, default=2, help="prompts the slow baseline is timed on (default: 2)")
    parser.add_argument("--seed", type=int, default=123, help="seed of the random weights (default: 123)")
    parser.add_argument("--data", type=Path, default=INSTRUCTION_DATA, help="the chapter's instruction-data.json")
    parser.add_argument("--tokenizer-dir", type=Path, default=TOKENIZER_DIR, help="GPT-2's encoder.json and vocab.bpe")
    parser.add_argument(
        "--rows",
        default="0,1,2",
        help="comma-separated row numbers to run (default 0,1,2: the compiled rows spend tens of seconds "
        "compiling on a CPU and gain nothing there, docs/performance.md; 0 and 1 always run): "
        + "; ".join(f"{n} {row.name}" for n, row in enumerate(ROWS)),
    )
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

    wanted = {0, 1, *(int(r) for r in args.rows.split(","))}
    timings: dict[int, Timing] = {}
    for number, row in enumerate(ROWS):
        if number not in wanted:
            continue
        if row.features.bf16 and not native_bf16(device):
            print(f"#{number} {row.name}: skipped, no bf16 matmuls in this {device.type}'s hardware")
            continue
        print(f"measuring #{number} {row.name}", flush=True)
        row_prompts = prompts[: settings.baseline_prompts] if number == 0 else prompts
        timings[number] = time_row(row, model, row_prompts, settings)
    if device.type == "cuda":
        print("CUDA graphs for the decode step: in the compiled rows (torch.compile mode reduce-overhead)")
    else:
        print("CUDA graphs for the decode step: skipped, no CUDA device")
    baseline, fp32_batched = timings[0], timings[1]

    print(
        f"\n{'#':>2}  {'method':<42}{'prompts':>8}{'new tokens':>11}{'seconds':>9}{'tokens/s':>10}"
        f"{'vs row 1':>9}{'vs baseline':>12}{'warm-up s':>10}{'graphs':>7}"
    )
    for number, t in timings.items():
        vs_row_1 = f"{t.tokens_per_s / fp32_batched.tokens_per_s:.2f}x" if number > 1 else ""
        graphs = f"{t.graphs_warmup}+{t.graphs_timed}" if t.row.features.compile else ""
        print(
            f"{number:>2}  {t.row.name:<42}{t.prompts:>8}{t.new_tokens:>11}{t.seconds:>9.2f}{t.tokens_per_s:>10.1f}"
            f"{vs_row_1:>9}{t.tokens_per_s / baseline.tokens_per_s:>11.2f}x{t.warmup_seconds:>10.1f}{graphs:>7}"
        )
    print("graphs: compiled in the warm-up + compiled while timed (recompilations)")
    same = sum(a == b for a, b in zip(fp32_batched.outputs, baseline.outputs))
    print(f"#1 {fp32_batched.row.name}: same tokens as the baseline on {same}/{baseline.prompts} prompts")
    for number, t in timings.items():
        if number > 1:
            same = sum(a == b for a, b in zip(t.outputs, fp32_batched.outputs))
            print(f"#{number} {t.row.name}: same greedy tokens as #1 on {same}/{t.prompts} prompts")
    best = timings[max(timings)]
    print(f"ratio_vs_baseline: {best.tokens_per_s / baseline.tokens_per_s:.2f}")


if __name__ == "__main__":
    main()
