"""Which examples go into which global batch, and which part of it each rank takes.

The sequence of global batches is a pure function of (seed, epoch, global batch size): never of
the world size. That is what lets a run resume on another number of ranks, and lets 1 rank x 8
examples, 1 rank x 2 x 4 and 2 ranks x 4 compute the same step. Each rank takes a contiguous
slice of every global batch and cuts it into micro-batches.

As the chapter's DataLoader(shuffle=True, drop_last=True): the training order is reshuffled every
epoch and an incomplete last batch is dropped. Evaluation uses every example, in order.
"""

from __future__ import annotations

import torch


def epoch_order(num_examples: int, seed: int, epoch: int) -> list[int]:
    """The example indices of one epoch (epochs count from 1), shuffled with the seed."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_examples, generator=generator).tolist()


def global_batches(order: list[int], global_batch: int, drop_last: bool = True) -> list[list[int]]:
    batches = [order[i : i + global_batch] for i in range(0, len(order), global_batch)]
    if drop_last and batches and len(batches[-1]) < global_batch:
        batches.pop()
    return batches


def rank_slice(batch: list, rank: int, world_size: int) -> list:
    """This rank's contiguous share of a list (a global batch, the evaluation's examples): the
    project's one sharding rule. Ranks differ by at most one item."""
    base, extra = divmod(len(batch), world_size)
    start = rank * base + min(rank, extra)
    return batch[start : start + base + (1 if rank < extra else 0)]


def micro_batches(indices: list[int], micro_batch: int) -> list[list[int]]:
    return [indices[i : i + micro_batch] for i in range(0, len(indices), micro_batch)]


# Examples are sorted by length within windows of this many global batches, as Hugging Face's
# LengthGroupedSampler (its megabatches of 50 batches): batches of near-equal lengths, while the
# examples that meet in a batch still change from epoch to epoch.
GROUPING_WINDOW_BATCHES = 50


def group_by_length_order(lengths: list[int], seed: int, epoch: int, global_batch: int) -> list[list[int]]:
    """The global batches of one epoch, each of examples of similar length.

    The epoch takes the same examples as the plain path (epoch_order, less the incomplete last
    batch that drop_last drops), each once. Within windows of GROUPING_WINDOW_BATCHES batches they
    are sorted by length (longest first; ties keep their random order) and cut into batches, and
    the batches are then shuffled among themselves so the loss curve has no length trend. A pure
    function of (lengths, seed, epoch, global batch), never of the world size.
    """
    order = epoch_order(len(lengths), seed, epoch)
    kept = order[: len(order) - len(order) % global_batch]
    window = global_batch * GROUPING_WINDOW_BATCHES
    batches = []
    for start in range(0, len(kept), window):
        by_length = sorted(kept[start : start + window], key=lambda i: -lengths[i])
        batches += global_batches(by_length, global_batch)
    # A stream apart from epoch_order's: its seeds (seed * 1_000_003 + epoch) are never negative.
    generator = torch.Generator().manual_seed(-(seed * 1_000_003 + epoch) - 1)
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def epoch_batches(lengths: list[int], seed: int, epoch: int, global_batch: int, group_by_length: bool) -> list[list[int]]:
    """The global batches of one epoch: random (the chapter's), or grouped by length (--group-by-length)."""
    if group_by_length:
        return group_by_length_order(lengths, seed, epoch, global_batch)
    return global_batches(epoch_order(len(lengths), seed, epoch), global_batch)
