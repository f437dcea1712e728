"""Instruction data: load, split, tokenize and batch, as Raschka's ch. 7.

*Build a Large Language Model (From Scratch)*, ch07/01_main-chapter-code: the Alpaca-style
entries are split in file order (85% train, 10% test, the rest validation), each example is the
prompt followed by its response, tokenized once, and `custom_collate_fn` pads a batch with
<|endoftext|>, shifts it into inputs and targets, and hides the padding from the loss.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import NamedTuple

import tiktoken
import torch
from torch.utils.data import Dataset

from instruct import format_prompt, read_entries
from trainer.training.loss import IGNORE_INDEX
from trainer.gpt2.tokenizer import EOT_TOKEN_ID


def load_instruction_data(source: str) -> tuple[list[dict], Path]:
    """The entries of a local JSON/JSONL file or of an http(s) URL, and the file they came from.

    A URL is downloaded once into the cache and reused from there. Every entry is checked by
    instruct.read_entries: a bad one raises an EntryError naming the file, entry and field.
    """
    if source.startswith(("http://", "https://")):
        from trainer.gpt2.fetch import cache_dir, download

        # The URL's hash keeps two files of the same name from different places apart.
        url_hash = hashlib.sha256(source.encode()).hexdigest()[:16]
        path = download(
            source,
            cache_dir() / "data" / url_hash / source.rsplit("/", 1)[-1],
            offline_hint="download it on a machine with internet and pass --data PATH to the local copy",
        )
    else:
        path = Path(source)
    return read_entries(path), path


def split_entries(
    entries: list[dict], fractions: tuple[float, float] = (0.85, 0.10), seed: int | None = None
) -> tuple[list[dict], list[dict], list[dict]]:
    """(train, test, validation): the first `fractions[0]` of the entries, the next `fractions[1]`,
    the rest. Sizes truncate as the chapter's `int(len(data) * 0.85)` (1,100 -> 935/110/55).
    With a seed, the entries are shuffled (reproducibly) before splitting; the chapter does not.
    """
    train_fraction, test_fraction = fractions
    if train_fraction <= 0 or test_fraction <= 0 or train_fraction + test_fraction >= 1:
        raise ValueError(
            f"split fractions {train_fraction},{test_fraction}: need two positive fractions "
            f"(train, test) summing to less than 1, e.g. 0.85,0.10"
        )
    if seed is not None:
        entries = entries.copy()
        random.Random(seed).shuffle(entries)
    train_end = int(len(entries) * train_fraction)
    test_end = train_end + int(len(entries) * test_fraction)
    train, test, val = entries[:train_end], entries[train_end:test_end], entries[test_end:]
    if not (train and test and val):
        raise ValueError(
            f"{len(entries)} entries split {train_fraction},{test_fraction} leave an empty part "
            f"(train {len(train)}, test {len(test)}, validation {len(val)})"
        )
    return train, test, val


class Example(NamedTuple):
    token_ids: list[int]  # the prompt's tokens followed by the response's
    prompt_length: int  # tokens of the prompt: instruction, input and the "### Response:" header


class InstructionDataset(Dataset):
    """The entries, tokenized once: the prompt followed by the response (the chapter's
    `full_text = instruction_plus_input + response_text`)."""

    def __init__(self, entries: list[dict], tokenizer: tiktoken.Encoding):
        # Prompt and response are tokenized apart so the prompt's length is exact for
        # mask_prompt; the prompt ends in "\n", which GPT-2's pre-tokenizer never merges with
        # the text after it, so the tokens equal the chapter's encode(full_text) (tested).
        # encode_ordinary: a literal "<|endoftext|>" in the data is text, not the special token.
        prompts = tokenizer.encode_ordinary_batch([format_prompt(entry) for entry in entries])
        responses = tokenizer.encode_ordinary_batch([entry["output"] for entry in entries])
        self.examples = [
            Example(prompt + response, len(prompt)) for prompt, response in zip(prompts, responses)
        ]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Example:
        return self.examples[index]

    @property
    def lengths(self) -> list[int]:
        return [len(example.token_ids) for example in self.examples]


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
    return sum(n + 1 > max_length for n in lengths), sum(n > max_length for n in lengths)
