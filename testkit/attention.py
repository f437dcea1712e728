"""The baseline attention of the training benchmark, also checked by the tests: written out as the
chapter's MultiHeadAttention (Raschka ch. 3) instead of torch's fused kernel."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from trainer.gpt2.model import GPT, CausalSelfAttention


class HandWrittenAttention(CausalSelfAttention):
    """Scores, a causal mask, softmax, weighted values, one op at a time. Same weights and outputs
    as the SDPA one."""

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask) -> torch.Tensor:
        T = q.size(2)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        allowed = torch.ones(T, T, dtype=torch.bool, device=q.device).tril() if attn_mask is None else attn_mask
        weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
        return F.dropout(weights, self.dropout, self.training) @ v


def use_hand_written_attention(model: GPT) -> GPT:
    """The model with every block's attention replaced by HandWrittenAttention (same weights)."""
    for block in model.transformer.h:
        hand_written = HandWrittenAttention(model.config).to(block.attn.c_attn.weight.device)
        hand_written.load_state_dict(block.attn.state_dict())
        block.attn = hand_written
    return model
