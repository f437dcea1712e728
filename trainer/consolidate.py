"""A plain (non-DeepSpeed) copy of the engine's model: for generation, samples and exports.

Under ZeRO 0-2 every rank holds the whole model and the engine's module is used as it is.
Under ZeRO-3 each rank holds a shard: the parameters are gathered once (a collective: every rank
calls this) into a plain GPT on each rank, which then generates without collectives. Generating
through the ZeRO-3 engine would re-gather every layer at every forward (orders of magnitude
slower), and ranks that finish early would leave the others hanging in a gather.
"""

from __future__ import annotations

import contextlib

import torch

from trainer.model import GPT


def plain_model(engine, dtype: torch.dtype | None = None) -> GPT:
    """The engine's model, or a plain copy of it (always under ZeRO-3, or to change its dtype)."""
    module = engine.module
    device = next(module.parameters()).device
    zero3 = engine.zero_optimization_stage() == 3
    if not zero3 and (dtype is None or next(module.parameters()).dtype == dtype):
        return module
    copy = GPT(module.config).to(device)
    params = dict(module.named_parameters())
    if zero3:
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=None)
    else:
        gathered = contextlib.nullcontext()
    with gathered, torch.no_grad():
        for name, target in copy.named_parameters():
            target.copy_(params[name].data)
    copy.eval()
    return copy.to(dtype) if dtype is not None else copy
