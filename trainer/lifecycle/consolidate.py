"""A checkpoint of a run as a plain model: DeepSpeed's shards merged on the CPU, in one process.

ZeRO 1-3 shards (written by any number of ranks) are merged by DeepSpeed's zero_to_fp32 (the fp32
master weights); a ZeRO-0 checkpoint holds the whole module in its model-states file. GPT-2 ties
its output head to the token embedding, and the merge may return the shared tensor under one name
only: the model is rebuilt from the run's config and tied again, and a head that differs from the
embedding is kept untied rather than dropped.

DeepSpeed's checkpoint files are pickles that it loads with weights_only=False: consolidate only
run directories this tool wrote.
"""

from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path

import torch

from trainer.gpt2.model import GPT
from trainer.gpt2.weights import read_architecture
from trainer.lifecycle import checkpoint


def consolidated_state_dict(directory: Path, tag: str) -> dict[str, torch.Tensor]:
    """The fp32 weights of a checkpoint; a damaged one is a one-line ValueError."""
    try:
        if list((directory / tag).glob("*optim_states.pt")):
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            return get_fp32_state_dict_from_zero_checkpoint(str(directory), tag=tag)
        # ZeRO-0: the whole module is in the model-states file.
        states = torch.load(directory / tag / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
        return {k: v.float() for k, v in states["module"].items()}
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, KeyError, TypeError, AttributeError,
            ValueError) as e:
        detail = " ".join(f"{type(e).__name__}: {e}".split())[:200]
        raise ValueError(f"{directory / tag}: not a readable DeepSpeed checkpoint ({detail})") from None


def model_from_checkpoint(run_dir: Path, step: int | None = None) -> tuple[GPT, str]:
    """(model, tag) for the checkpoint at `step` (default: the latest); the run's config.json says
    what the model is."""
    run_dir = Path(run_dir)
    config_file = run_dir / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{run_dir}: not a run directory (no config.json)")
    directory = checkpoint.checkpoint_dir(run_dir)
    complete = checkpoint.complete_tags(directory) if directory.is_dir() else []
    if not complete:
        raise ValueError(f"{run_dir}: holds no complete checkpoint")
    if step is None:
        tag = complete[-1]
    else:
        tag = f"global_step{step}"
        if tag not in complete:
            steps = ", ".join(t.removeprefix("global_step") for t in complete)
            raise ValueError(f"{run_dir}: no complete checkpoint at step {step} (there are: {steps})")
    architecture = read_architecture(config_file, dropout=0.0, tied=True)  # checked before the long load
    state = consolidated_state_dict(directory, tag)
    tied = "lm_head.weight" not in state or torch.equal(state["lm_head.weight"], state["transformer.wte.weight"])
    model = GPT(replace(architecture, tie_embeddings=tied))
    if tied:
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if k != "lm_head.weight"]  # the tied head
    else:
        missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{directory / tag}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval(), tag
