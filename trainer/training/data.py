"""Instruction data: the file, the split, the tokens of each example and the batches, as Raschka's ch. 7.

*Build a Large Language Model (From Scratch)*, ch07/01_main-chapter-code: the Alpaca-style
entries are split in file order (85% train, 10% test, the rest validation), each example is the
prompt followed by its response, tokenized once, and `custom_collate_fn` pads a batch with
<|endoftext|>, shifts it into inputs and targets, and hides the padding from the loss.

At scale the tokens do not live in Python lists: `tokenize` turns entries into a `TokenTable`
(flat uint16 token ids, offsets, prompt lengths), which the run keeps in its token cache on disk
(trainer/training/token_cache.py) and every rank memory-maps; an `InstructionDataset` is a split's
example indices into such a table.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import tiktoken
import torch
from torch.utils.data import Dataset

from instruct import format_prompt
from trainer.training.loss import IGNORE_INDEX
from trainer.gpt2.tokenizer import EOT_TOKEN_ID

TOKEN_DTYPE = np.uint16  # GPT-2's 50,257 token ids fit: half the memory and disk of int32


def data_file(source: str) -> Path:
    """The local file of --data: the path itself, or an http(s) URL downloaded once into the cache
    (and reused from there)."""
    if not source.startswith(("http://", "https://")):
        return Path(source)
    from trainer.gpt2.fetch import cache_dir, download

    # The URL's hash keeps two files of the same name from different places apart.
    url_hash = hashlib.sha256(source.encode()).hexdigest()[:16]
    return download(
        source,
        cache_dir() / "data" / url_hash / source.rsplit("/", 1)[-1],
        offline_hint="download it on a machine with internet and pass --data PATH to the local copy",
    )


def split_indices(
    count: int, fractions: tuple[float, float] = (0.85, 0.10), seed: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, test, validation) entry indices: the first `fractions[0]` of the entries, the next
    `fractions[1]`, the rest. Sizes truncate as the chapter's `int(len(data) * 0.85)` (1,100 ->
    935/110/55). With a seed, the entries are shuffled (reproducibly) before splitting, as
    `random.Random(seed).shuffle(entries)` would shuffle them; the chapter does not.
    """
    train_fraction, test_fraction = fractions
    if train_fraction <= 0 or test_fraction <= 0 or train_fraction + test_fraction >= 1:
        raise ValueError(
            f"split fractions {train_fraction},{test_fraction}: need two positive fractions "
            f"(train, test) summing to less than 1, e.g. 0.85,0.10"
        )
    order = list(range(count))
    if seed is not None:
        random.Random(seed).shuffle(order)  # depends only on the count: the entries' own shuffle
    order = np.array(order, dtype=np.int64)
    train_end = int(count * train_fraction)
    test_end = train_end + int(count * test_fraction)
    train, test, val = order[:train_end], order[train_end:test_end], order[test_end:]
    if not (len(train) and len(test) and len(val)):
        raise ValueError(
            f"{count} entries split {train_fraction},{test_fraction} leave an empty part "
            f"(train {len(train)}, test {len(test)}, validation {len(val)})"
        )
    return train, test, val


def split_entries(
    entries: list[dict], fractions: tuple[float, float] = (0.85, 0.10), seed: int | None = None
) -> tuple[list[dict], list[dict], list[dict]]:
    """The entries themselves split as `split_indices` splits their indices."""
    train, test, val = split_indices(len(entries), fractions, seed)
    return [entries[i] for i in train], [entries[i] for i in test], [entries[i] for i in val]


@dataclass
class TokenTable:
    """Every example's tokens end to end: example i is tokens[offsets[i]:offsets[i + 1]], of which
    the first prompt_lengths[i] are its prompt. In memory (from `tokenize`), or memory-mapped from
    the token cache (trainer/training/token_cache.py), whose files hold exactly these arrays."""

    tokens: np.ndarray  # TOKEN_DTYPE
    offsets: np.ndarray  # int64, one more than there are examples
    prompt_lengths: np.ndarray  # int32

    def __len__(self) -> int:
        return len(self.prompt_lengths)


def tokenize(entries: list[dict], tokenizer: tiktoken.Encoding, threads: int | None = None) -> TokenTable:
    """The entries' examples: the prompt followed by the response (the chapter's
    `full_text = instruction_plus_input + response_text`), untruncated.

    Prompt and response are tokenized apart so the prompt's length is exact for mask_prompt; the
    prompt ends in "\\n", which GPT-2's pre-tokenizer never merges with the text after it, so the
    tokens equal the chapter's encode(full_text) (tested). encode_ordinary: a literal
    "<|endoftext|>" in the data is text, not the special token. tiktoken encodes in `threads`
    threads (its Rust core releases the GIL); default: one per CPU this process may use.
    """
    if tokenizer.max_token_value > np.iinfo(TOKEN_DTYPE).max:
        raise ValueError(f"a vocabulary of {tokenizer.max_token_value + 1} tokens does not fit {TOKEN_DTYPE.__name__}")
    threads = threads or len(os.sched_getaffinity(0))
    prompts = tokenizer.encode_ordinary_batch([format_prompt(entry) for entry in entries], num_threads=threads)
    responses = tokenizer.encode_ordinary_batch([entry["output"] for entry in entries], num_threads=threads)
    lengths = np.array([len(p) + len(r) for p, r in zip(prompts, responses)], dtype=np.int64)
    offsets = np.zeros(len(entries) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.fromiter(itertools.chain.from_iterable(itertools.chain(p, r) for p, r in zip(prompts, responses)),
                         dtype=TOKEN_DTYPE, count=int(offsets[-1]))
    return TokenTable(tokens, offsets, np.array([len(p) for p in prompts], dtype=np.int32))


class Example(NamedTuple):
    token_ids: list[int]  # the prompt's tokens followed by the response's
    prompt_length: int  # tokens of the prompt: instruction, input and the "### Response:" header


class InstructionDataset(Dataset):
    """A split's examples, by position in the split: `indices` are their entries' indices in a
    token table (all of them by default). `table` is a TokenTable, or the run's TokenCache, whose
    arrays can be read once the tokenize phase has mapped them; the split's size is known before."""

    def __init__(self, table, indices: np.ndarray | None = None):
        self.table = table
        self.indices = np.arange(len(table)) if indices is None else indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Example:
        entry = int(self.indices[index])
        start, end = self.table.offsets[entry : entry + 2]
        return Example(self.table.tokens[start:end].tolist(), int(self.table.prompt_lengths[entry]))

    @property
    def lengths(self) -> np.ndarray:
        """Each example's number of tokens (int64), in split order."""
        offsets = self.table.offsets
        return offsets[self.indices + 1] - offsets[self.indices]


def collate(
    batch: list[list[int]],
    *,
    pad_token_id: int = EOT_TOKEN_ID,
    ignore_index: int = IGNORE_INDEX,
    allowed_max_length: int | None = 1024,
    prompt_lengths: list[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of shape (batch, longest), as the chapter's `custom_collate_fn`.

    Each sequence gets an <|endoftext|> (the pad token) and is padded to the batch's longest;
    inputs are tokens 0..n-1, targets tokens 1..n. The <|endoftext|> after the response stays a
    target (the model learns to stop); the padding after it is ignore_index. With
    `prompt_lengths` (mask_prompt), the targets that predict prompt tokens are ignored too:
    target i predicts token i+1, so those are the first prompt_length-1. Both are cut to
    `allowed_max_length`. CPU int64 tensors; the training loop moves them to its device.
    """
    longest = max(len(token_ids) for token_ids in batch)
    if prompt_lengths is None:
        prompt_lengths = [0] * len(batch)
    rows_inputs, rows_targets = [], []
    for token_ids, prompt_length in zip(batch, prompt_lengths, strict=True):
        padding = longest - len(token_ids)
        targets = token_ids[1:] + [pad_token_id] + [ignore_index] * padding
        masked = max(prompt_length - 1, 0)
        targets[:masked] = [ignore_index] * masked
        rows_inputs.append(token_ids + [pad_token_id] * padding)
        rows_targets.append(targets)
    inputs = torch.tensor(rows_inputs, dtype=torch.int64)
    targets = torch.tensor(rows_targets, dtype=torch.int64)
    if allowed_max_length is not None:
        inputs = inputs[:, :allowed_max_length]
        targets = targets[:, :allowed_max_length]
    return inputs, targets


def count_truncated(dataset: InstructionDataset, max_length: int) -> tuple[int, int]:
    """(longer, eot_cut): the examples that do not fit a context of `max_length` tokens.

    longer: examples that, with their appended <|endoftext|>, are longer than max_length.
    eot_cut: of those, the ones of more than max_length tokens: their tail is cut and with it the
    <|endoftext|> target, so the model never sees them end. The others (exactly max_length
    tokens) lose nothing: their last input token still predicts the <|endoftext|>.
    """
    lengths = dataset.lengths
    return int((lengths + 1 > max_length).sum()), int((lengths > max_length).sum())
