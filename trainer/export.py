"""`python -m trainer.export RUN_DIR [--step N] [--out DIR]`: any checkpoint as model files.

Consolidates a DeepSpeed checkpoint of a run (ZeRO 0-3, written by any number of ranks) on the
CPU, in one process (trainer/lifecycle/consolidate.py), into the chapter-named .pth (chapter key
names) and Hugging Face files (model.safetensors + config.json), so that an intermediate model can
be tried with `python -m trainer.generate`, and its responses judged.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainer.gpt2.weights import chapter_filename, export_chapter_pth, export_hf
from trainer.lifecycle.consolidate import model_from_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--step", type=int, default=None, help="the checkpoint's step (default: the latest)")
    parser.add_argument("--out", type=Path, default=None, help="default: RUN_DIR/exports/global_step<N>")
    args = parser.parse_args(argv)
    try:
        model, tag = model_from_checkpoint(args.run_dir, args.step)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or args.run_dir / "exports" / tag
    pth = out / chapter_filename(model.config)
    export_chapter_pth(model, pth)
    export_hf(model, out / "hf")
    print(f"{tag}: wrote {pth} and {out / 'hf'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
