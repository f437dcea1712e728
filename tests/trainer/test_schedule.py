"""The learning-rate schedule and clipping against closed-form values, through a real optimizer.

The run's AdamW steps with `lr_lambda`'s factor of the base rate: linear warmup over
--warmup-steps, then constant or cosine to 0 at the last step. The rate of update s (from 0) is
read by its effect on a parameter: with a constant gradient, every bias-corrected AdamW step
without weight decay moves a weight by exactly lr_s * g / (|g| + eps). (The launcher tests check
the same values in the logged `train` events, tests/trainer/test_pipeline.py.)
"""

from __future__ import annotations

import math

import pytest
import torch

from trainer.training.config import TrainConfig, batch_layout
from trainer.training.engine import MEASURE_ONLY_CLIP, build_ds_config, lr_lambda

BASE = 5e-5
TOTAL = 8


def closed_form(schedule: str, warmup: int, step: int) -> float:
    """The rate of update `step` (from 0)."""
    if step < warmup:
        return BASE * (step + 1) / warmup
    if schedule == "constant":
        return BASE
    return BASE * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (TOTAL - warmup)))


def rates_used(schedule: str, warmup: int) -> list[float]:
    weight = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    optimizer = torch.optim.AdamW([weight], lr=BASE, weight_decay=0.0, eps=1e-30)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(schedule, warmup, TOTAL))
    moves = []
    for _ in range(TOTAL):
        before = weight.item()
        weight.grad = torch.ones_like(weight)
        optimizer.step()
        scheduler.step()
        moves.append(before - weight.item())  # lr_s * 1 / (1 + eps)
    return moves


@pytest.mark.parametrize("schedule, warmup", [("constant", 0), ("constant", 3), ("cosine", 0), ("cosine", 2)])
def test_each_update_uses_the_closed_form_rate(schedule, warmup):
    expected = [closed_form(schedule, warmup, s) for s in range(TOTAL)]
    assert rates_used(schedule, warmup) == pytest.approx(expected, rel=1e-12, abs=1e-20)
    if schedule == "cosine":
        assert expected[-1] > 0 and expected[warmup] == BASE  # the last update is not at rate 0


@pytest.mark.parametrize("clip, expected", [(1.0, 1.0), (0.0, MEASURE_ONLY_CLIP)])
def test_grad_clip_is_what_deepspeed_clips_to(clip, expected):
    """--grad-clip C clips the global gradient norm to C; 0 still has DeepSpeed measure the norm
    (a threshold no gradient reaches, so no gradient changes)."""
    config = TrainConfig(grad_clip=clip)
    ds, overridden = build_ds_config({"gradient_clipping": 0.5}, config, batch_layout(8, None, 2), "fp32")
    assert ds["gradient_clipping"] == expected and overridden == ["gradient_clipping"]
    ds, overridden = build_ds_config({"gradient_clipping": "auto"}, config, batch_layout(8, None, 2), "fp32")
    assert overridden == []
