"""`python -m trainer.export RUN_DIR [--step N] [--out DIR] [--gguf]`: any checkpoint as model files.

Consolidates a DeepSpeed checkpoint of a run (ZeRO 0-3, written by any number of ranks) on the
CPU, in one process (trainer/lifecycle/consolidate.py), into the chapter-named .pth (chapter key
names) and Hugging Face files (model.safetensors + config.json), so that an intermediate model can
be tried with `python -m trainer.generate`, and its responses judged. `--weights PATH` takes any
GPT-2 this project reads instead (a Hugging Face directory, a chapter or project .pth).

`--gguf` adds gguf/<name>.gguf and an Ollama Modelfile (trainer/gpt2/gguf_export.py, docs/gguf.md),
for llama.cpp, Ollama and LM Studio.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainer.gpt2.gguf_export import DEFAULT_GGUF_TYPE, GGUF_TYPES, check_gguf, export_gguf
from trainer.gpt2.model import PRESETS
from trainer.gpt2.tokenizer import get_tokenizer
from trainer.gpt2.weights import chapter_filename, export_chapter_pth, export_hf, load_model
from trainer.lifecycle.consolidate import model_from_checkpoint


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m trainer.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, nargs="?", help="a run directory with checkpoints")
    parser.add_argument("--step", type=int, default=None, help="the checkpoint's step (default: the latest)")
    parser.add_argument("--weights", default=None,
                        help="instead of RUN_DIR: a HF model.safetensors or its directory, or a .pth (chapter's or this project's)")
    parser.add_argument("--model", default=None, choices=list(PRESETS),
                        help="with --weights: the preset, needed only where no config.json beside the weights says (a bare .pth)")
    parser.add_argument("--out", type=Path, default=None, help="default: RUN_DIR/exports/global_step<N>; needed with --weights")
    parser.add_argument("--gguf", action="store_true", help="also write gguf/<name>.gguf and its Ollama Modelfile")
    parser.add_argument("--gguf-type", choices=list(GGUF_TYPES), default=None,
                        help=f"with --gguf: the weights' type (default {DEFAULT_GGUF_TYPE}; 1-D tensors stay f32)")
    parser.add_argument("--tokenizer-dir", default=None,
                        help="with --gguf: directory with GPT-2's encoder.json and vocab.bpe (offline); or set GPT2_TOKENIZER_DIR")
    args = parser.parse_args(argv)
    if (args.run_dir is None) == (args.weights is None):
        parser.error("give a RUN_DIR or --weights PATH, one of them")
    if args.weights is not None and (args.out is None or args.step is not None):
        parser.error("--weights takes --out DIR and no --step")
    if args.run_dir is not None and args.model is not None:
        parser.error("--model goes with --weights; a run's config.json says what its model is")
    if not args.gguf and (args.gguf_type or args.tokenizer_dir):
        parser.error("--gguf-type and --tokenizer-dir go with --gguf")
    args.gguf_type = args.gguf_type or DEFAULT_GGUF_TYPE
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        # The tokenizer first: a missing file should not wait for a checkpoint to consolidate.
        tokenizer = get_tokenizer(args.tokenizer_dir) if args.gguf else None
        if args.weights is not None:
            model, info = load_model(args.model, args.weights)
            tag, out = info.source, args.out
        else:
            model, tag = model_from_checkpoint(args.run_dir, args.step)
            out = args.out or args.run_dir / "exports" / tag
        if args.gguf:
            check_gguf(model.config, tokenizer, args.gguf_type)
    except ValueError as e:  # TokenizerError, load_model's and the checkpoint's errors: one line each
        print(f"error: {e}", file=sys.stderr)
        return 2
    pth = out / chapter_filename(model.config)
    export_chapter_pth(model, pth)
    export_hf(model, out / "hf")
    written = [pth, out / "hf"]
    if args.gguf:
        written.append(export_gguf(model, tokenizer, out / "gguf", args.gguf_type))
    print(f"{tag}: wrote {', '.join(map(str, written))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
