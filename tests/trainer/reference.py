"""The tiny model's first training steps computed here in plain PyTorch, one process: what the
launcher's ranks must reproduce (the chapter's AdamW, token-mean loss over the global batch)."""

from __future__ import annotations

import torch

from instruct import read_entries
from testkit.paths import INSTRUCTION_DATA, TOKENIZER_DIR
from trainer.gpt2.model import GPT, preset
from trainer.gpt2.tokenizer import get_tokenizer
from trainer.training.batches import epoch_order, global_batches
from trainer.training.data import InstructionDataset, collate, split_entries, tokenize
from trainer.training.loss import target_count, token_loss_sum


def reference_steps(batch_indices: list[int], lrs: list[float], clip: float | None = None):
    """(state dict, gradient norms before clipping) after one AdamW step (weight decay 0.1) per
    global batch of epoch 1 (seed 123, global batch 8) at the given rates; `clip`: the global
    gradient norm is clipped to it first, as DeepSpeed's gradient_clipping."""
    torch.manual_seed(123)
    model = GPT(preset("tiny"))
    train_split, _, _ = split_entries(read_entries(INSTRUCTION_DATA))
    dataset = InstructionDataset(tokenize(train_split, get_tokenizer(TOKENIZER_DIR)))
    batches = global_batches(epoch_order(len(dataset), 123, 1), 8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lrs[0], weight_decay=0.1)
    norms = []
    for index, lr in zip(batch_indices, lrs, strict=True):
        inputs, targets = collate([dataset[i].token_ids for i in batches[index]])
        optimizer.zero_grad()
        loss = token_loss_sum(model(inputs), targets) / target_count(targets)
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip if clip else float("inf"))))
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
    return model.state_dict(), norms
