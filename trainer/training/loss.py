"""Token-level losses.

The training loss is the mean cross-entropy over every non-ignored target token of the whole
global batch: not a mean of per-rank or per-micro-batch means, which would weight a short
micro-batch's tokens more than a long one's. Each rank therefore sums its tokens' losses, and the
step divides by the global token count (known before the backward, see trainer/training/loop.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def token_loss_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum of cross-entropy over non-ignored targets, computed in fp32 (bf16 logits lose digits)."""
    return F.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )


def target_count(targets: torch.Tensor) -> int:
    return int((targets != IGNORE_INDEX).sum())
