"""Instruction fine-tuning of GPT-2 with DeepSpeed.

    deepspeed launch/train.py                       # the chapter's run: gpt2-medium, 2 epochs
    deepspeed --hostfile hosts launch/train.py --model gpt2-xl --global-batch 64

Thin on purpose: parse the flags into a TrainConfig, hand it to trainer.lifecycle.pipeline, whose phases do the run.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from trainer.training.config import TrainConfig  # noqa: E402

DEFAULTS = TrainConfig()


def parse_split(text: str) -> tuple[float, float]:
    try:
        train, test = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two fractions like 0.85,0.10, got '{text}'") from None
    return train, test


EXPECT_RANKS_ENV = "GPT2_INSTRUCT_EXPECT_RANKS"  # for batch scripts, which set it once


def expected_ranks() -> int | None:
    value = os.environ.get(EXPECT_RANKS_ENV, "")
    try:
        return int(value) if value else None
    except ValueError:
        raise SystemExit(f"error: {EXPECT_RANKS_ENV}={value!r} is not a number of ranks") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="deepspeed launch/train.py",
        description="Instruction fine-tuning of GPT-2 (the chapter's run by default) with DeepSpeed ZeRO.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    a = p.add_argument_group("model and data")
    a.add_argument("--model", default=None, choices=["gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl", "tiny"],
                   help="preset (default: what the weights' config.json says; gpt2-medium with --weights auto or none)")
    a.add_argument("--weights", default=DEFAULTS.weights, help="auto (download pretrained), none (random) or a path: model.safetensors, its directory, or a .pth")
    a.add_argument("--data", default=DEFAULTS.data, help="instruction file (JSON list or JSONL), local path or http(s) URL")
    a.add_argument("--tokenizer-dir", default=None, help="directory with GPT-2's encoder.json and vocab.bpe (offline use); or set GPT2_TOKENIZER_DIR")
    a.add_argument("--out", default=None, help="run directory (default runs/<timestamp>-<model>)")
    a.add_argument("--split", type=parse_split, default=DEFAULTS.split, help="train,test fractions; validation is the rest")
    a.add_argument("--shuffle-split", action="store_true", help="shuffle (seeded) before splitting; the chapter splits in file order")
    a.add_argument("--max-length", type=int, default=DEFAULTS.max_length, help="tokens per example after which it is truncated")
    a.add_argument("--mask-prompt", action="store_true", help="no loss on the instruction and input tokens")

    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int, default=DEFAULTS.epochs)
    o.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    o.add_argument("--lr", type=float, default=DEFAULTS.lr)
    o.add_argument("--weight-decay", type=float, default=DEFAULTS.weight_decay)
    o.add_argument("--schedule", choices=["constant", "cosine"], default=DEFAULTS.schedule)
    o.add_argument("--warmup-steps", type=int, default=DEFAULTS.warmup_steps)
    o.add_argument("--grad-clip", type=float, default=DEFAULTS.grad_clip, help="max gradient norm; 0 = no clipping")
    o.add_argument("--global-batch", type=int, default=DEFAULTS.global_batch, help="examples per optimizer step, over all ranks")
    o.add_argument("--micro-batch", type=int, default=None, help="examples per forward on one rank (default global batch / world size)")
    o.add_argument("--zero-stage", type=int, choices=[0, 1, 2, 3], default=None, help="default: ds_config.json's")
    o.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"], default=DEFAULTS.precision, help="auto = bf16 on GPUs that support it, fp32 on CPU")
    o.add_argument("--dropout", type=float, default=DEFAULTS.dropout)
    o.add_argument("--seed", type=int, default=DEFAULTS.seed)

    e = p.add_argument_group("evaluation, checkpoints, outputs")
    e.add_argument("--eval-every", type=int, default=DEFAULTS.eval_every, help="steps between evaluations (0: only at epoch ends)")
    e.add_argument("--eval-batches", type=int, default=DEFAULTS.eval_batches)
    e.add_argument("--save-every", type=int, default=DEFAULTS.save_every, help="steps between checkpoints (0: at epoch ends only)")
    e.add_argument("--keep-checkpoints", type=int, default=DEFAULTS.keep_checkpoints)
    e.add_argument("--max-new-tokens", type=int, default=DEFAULTS.max_new_tokens, help="per test response")
    e.add_argument("--generate-batch", type=int, default=DEFAULTS.generate_batch, help="test prompts generated at once per rank")
    e.add_argument("--max-bad-steps", type=int, default=DEFAULTS.max_bad_steps, help="non-finite losses in a row before the run stops")
    e.add_argument("--export-gguf", action="store_true", help="also write the model as gguf/<name>.gguf (f16) with an Ollama Modelfile, for llama.cpp and Ollama")
    e.add_argument("--base-responses", action="store_true",
                   help="before the first step, answer the test split with the initial weights too (base_response), "
                        "so that the judge can say how much fine-tuning helped")

    j = p.add_argument_group("judging and notifications (docs/judge.md)")
    j.add_argument("--judge-url", default=None,
                   help="after the run, score the test responses with the judge server there (python -m judge score); "
                        "checked before the first step")
    j.add_argument("--judge-url-env", default=None, metavar="NAME",
                   help="instead of --judge-url: the environment variable holding the URL (one with credentials, "
                        "which the launcher would print with its command line)")
    j.add_argument("--judge-model", default=DEFAULTS.judge_model, help="the judge model")
    j.add_argument("--judge-api", choices=["ollama", "openai"], default=DEFAULTS.judge_api)
    j.add_argument("--judge-key-env", default=None, metavar="NAME", help="environment variable with the judge's API key")
    j.add_argument("--judge-samples", type=int, default=DEFAULTS.judge_samples, metavar="K",
                   help="judged evaluations: K validation prompts answered at up to 10 evaluations (evals/step-<N>.json), "
                        "scored by python -m judge follow (started by the run with --judge-url); 0: none")
    j.add_argument("--judge-every", type=int, default=None, metavar="N",
                   help="with --judge-samples: a judged evaluation every N steps instead")
    j.add_argument("--notify-env", default=None, metavar="NAME",
                   help="environment variable holding a webhook URL (Slack, Discord): a message on run_end, judge_end, "
                        "non-finite losses and lost ranks")

    s = p.add_argument_group("speed (docs/performance.md)")
    s.add_argument("--group-by-length", action="store_true", help="global batches of examples of similar length (less padding); each epoch still visits every example once")
    s.add_argument("--packing", action="store_true", help="pack each micro-batch's examples into rows of up to --max-length tokens, attention and positions kept per example")
    s.add_argument("--compile", action="store_true", help="torch.compile the model (dynamic shapes: no recompilation per length) and the generation's decode step (a CUDA graph on a GPU)")
    s.add_argument("--activation-checkpointing", action="store_true", help="recompute each block's activations in the backward: less memory, about a third more compute")

    r = p.add_argument_group("runtime")
    r.add_argument("--resume", action="store_true", help="continue the run in --out (default: the newest unfinished run under runs/)")
    r.add_argument("--ds-config", default=str(REPO / DEFAULTS.ds_config), help="DeepSpeed config (ZeRO, bf16, communication)")
    r.add_argument("--dist-timeout", type=float, default=DEFAULTS.dist_timeout, help="seconds a collective waits for a dead or hung rank")
    r.add_argument("--expect-ranks", type=int, default=expected_ranks(), metavar="N",
                   help="refuse to start unless the launcher started N ranks (a misspelled --hostfile falls back to "
                        f"this node alone); default ${EXPECT_RANKS_ENV}")
    r.add_argument("--dry-run", action="store_true",
                   help="print sizes, steps, tokens per step, memory estimates and whether the data's token cache "
                        "exists (building it if not), then exit")
    r.add_argument("--world-size", type=int, default=None, metavar="N",
                   help="with --dry-run: plan for N ranks (a cluster, from a laptop) instead of the launcher's")
    r.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # passed by the launcher
    return p


def main(argv: list[str] | None = None) -> int:
    args = vars(parser().parse_args(argv))
    args.pop("local_rank")  # the environment's LOCAL_RANK says the same
    config = TrainConfig(**args)

    from trainer.lifecycle.pipeline import main as run_pipeline

    return run_pipeline(config)


if __name__ == "__main__":
    code = main()
    # Every file is written and closed and the process group is gone. Skip the interpreter's
    # teardown: native threads of DeepSpeed/gloo can abort there ("terminate called without an
    # active exception", ../shared/notes/deepspeed.md), turning a finished run into a failed exit.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
