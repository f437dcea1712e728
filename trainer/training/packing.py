"""Packing: several examples in one row, each attending only to itself.

The chapter's data is short (41 to 92 tokens) and a random batch pads every example to the
longest, so about a fifth of the computed tokens are padding. Packing lays a micro-batch's
examples end to end in as few rows of at most `max_length` tokens as fit (first-fit decreasing)
and pads only the rows' tails. Three things keep the math of the unpacked batch:

- attention stays inside each example: a block-diagonal causal mask from per-token document ids
  (as in Krell et al. 2021, "Efficient Sequence Packing without Cross-contamination");
- positions restart at 0 for each example, so each sees the position embeddings it would alone;
- targets are those `collate` gives each example alone: an example's last target is its own
  <|endoftext|>, never the next example's first token; padding and masked prompts are -100.

Each example's logits, and so the summed token loss and its gradients, equal those of the same
example unpacked (tests/trainer/test_speed.py). The token-mean loss counts non-ignored targets
exactly as before. Packing applies within each rank's micro-batch: the global batch (which
examples, trainer/training/batches.py) is unchanged and independent of the world size; a micro-batch just
takes fewer, denser rows.

The mask: SDPA with a dense boolean (rows, 1, T, T) mask on CPU, where FlexAttention has no
backward (torch 2.13); a FlexAttention BlockMask on GPUs, which skips the blocks no query sees
(SDPA's flash kernel takes no mask at all).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from trainer.training.data import Example, collate
from trainer.training.loss import IGNORE_INDEX
from trainer.gpt2.tokenizer import EOT_TOKEN_ID

# FlexAttention works in blocks of 128 queries x 128 keys; rows padded to a multiple of it keep
# the number of distinct shapes (and so of compilations) at max_length / 128.
FLEX_BLOCK = 128


class PackedBatch(NamedTuple):
    inputs: torch.Tensor  # (rows, T) token ids; a row's tail after its last example is <|endoftext|>
    targets: torch.Tensor  # (rows, T); -100 where no loss is taken
    positions: torch.Tensor  # (rows, T) position ids, from 0 in each example
    doc_ids: torch.Tensor  # (rows, T) which example of its row a token belongs to; the tail is one more


def pack_rows(lengths: list[int], max_length: int) -> list[list[int]]:
    """Indices into `lengths` grouped into rows of at most max_length tokens: first-fit decreasing
    (Johnson 1973), a deterministic function of the lengths. Longer examples are cut to max_length
    by `collate`, so each one fits a row of its own."""
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):  # stable: ties keep their order
        n = min(lengths[i], max_length)
        row = next((r for r, space in enumerate(free) if space >= n), None)
        if row is None:
            rows.append([])
            free.append(max_length)
            row = len(rows) - 1
        rows[row].append(i)
        free[row] -= n
    return rows


def pack(examples: list[Example], max_length: int, mask_prompt: bool = False, row_multiple: int = 1) -> PackedBatch:
    """The examples packed into rows of at most max_length tokens (row_multiple: pad every row to a
    multiple of it, e.g. FLEX_BLOCK on GPUs). CPU int64 tensors, as `collate`'s."""
    rows_inputs, rows_targets, rows_positions, rows_docs = [], [], [], []
    for row in pack_rows([len(e.token_ids) for e in examples], max_length):
        inputs, targets, positions, docs = [], [], [], []
        for doc, i in enumerate(row):
            # collate of one example: its inputs and targets exactly as a batch would have them.
            example = examples[i]
            x, y = collate(
                [example.token_ids],
                allowed_max_length=max_length,
                prompt_lengths=[example.prompt_length] if mask_prompt else None,
            )
            inputs += x[0].tolist()
            targets += y[0].tolist()
            positions += range(x.size(1))
            docs += [doc] * x.size(1)
        rows_inputs.append(inputs)
        rows_targets.append(targets)
        rows_positions.append(positions)
        rows_docs.append(docs)
    longest = max(len(r) for r in rows_inputs)
    longest = -(-longest // row_multiple) * row_multiple
    for inputs, targets, positions, docs in zip(rows_inputs, rows_targets, rows_positions, rows_docs):
        # The tail is a document of its own, causal like the others, so every query attends to
        # something (an all-masked softmax row would be NaN) and no example attends to it.
        padding = longest - len(inputs)
        tail_doc = docs[-1] + 1
        inputs += [EOT_TOKEN_ID] * padding
        targets += [IGNORE_INDEX] * padding
        positions += range(padding)
        docs += [tail_doc] * padding
    as_tensor = lambda rows: torch.tensor(rows, dtype=torch.int64)  # noqa: E731
    return PackedBatch(as_tensor(rows_inputs), as_tensor(rows_targets), as_tensor(rows_positions), as_tensor(rows_docs))


def block_causal_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """(rows, 1, T, T) bool: query q may attend to key k iff both are in the same document and k <= q."""
    T = doc_ids.size(1)
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
    return (same_doc & causal).unsqueeze(1)


def flex_block_mask(doc_ids: torch.Tensor):
    """The same mask as a FlexAttention BlockMask (GPUs): blocks of 128 x 128 that no query may
    see are skipped, not computed and masked."""
    from torch.nn.attention.flex_attention import create_block_mask

    def same_doc_causal(b, h, q, k):
        return (doc_ids[b, q] == doc_ids[b, k]) & (k <= q)

    rows, T = doc_ids.shape
    return create_block_mask(same_doc_causal, rows, None, T, T, device=doc_ids.device)


def attention_mask(doc_ids: torch.Tensor, dropout: float):
    """The packed rows' mask for GPT.forward's attn_mask: a BlockMask on CUDA, else a bool tensor.
    FlexAttention has no attention dropout, so with dropout CUDA takes the bool tensor too."""
    if doc_ids.device.type == "cuda" and not dropout:
        return flex_block_mask(doc_ids)
    return block_causal_mask(doc_ids)


def forward_kwargs(packed: PackedBatch, device: torch.device, dropout: float = 0.0) -> dict:
    """GPT.forward's keyword arguments for the packed rows, on device: per-row positions and the
    block-diagonal causal mask, as in `logits = model(inputs, **forward_kwargs(packed, device))`.
    dropout: the model's (GPTConfig.dropout), which decides the kind of mask on CUDA."""
    mask = attention_mask(packed.doc_ids.to(device), dropout)
    return {"positions": packed.positions.to(device), "attn_mask": mask}


def row_multiple_for(device: torch.device) -> int:
    """Row padding for `pack` on this device: FLEX_BLOCK on CUDA (bounded compilations), else 1."""
    return FLEX_BLOCK if device.type == "cuda" else 1
