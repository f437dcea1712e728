"""Generating responses: batched with the KV cache, and the chapter's one-prompt recomputation.

Raschka, *Build a Large Language Model (From Scratch)*, ch. 5 and 7, generates one prompt at a
time and feeds the whole sequence to the model for every new token. That costs O(n^2) work per
response and leaves a GPU mostly idle. `generate` here does what gpt-fast's generate.py does
(https://github.com/pytorch-labs/gpt-fast): one prefill forward over the prompts fills a
preallocated KV cache, then each decode step feeds exactly one token per row. Many prompts of
different lengths run at once: they are left-padded to a common width, every row gets its own
position ids, and an attention mask keeps each row from seeing its pads, so a row gives exactly
what it gives alone.

`generate_recompute` is the chapter's loop, kept as the benchmark's baseline and the tests'
oracle. Both pick tokens with the same `sample_next`. How to generate (new tokens, temperature,
top-k, batch size, compilation) travels as one `GenerationSettings`.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn as nn

from instruct import RESPONSE_MARK, format_input
from trainer.gpt2.tokenizer import ENDOFTEXT, EOT_TOKEN_ID

PAD_TOKEN_ID = EOT_TOKEN_ID  # the chapter's collate pads with <|endoftext|>; pads are masked anyway


@dataclass(frozen=True)
class GenerationSettings:
    """How responses are generated. The defaults are the chapter's: greedy, 256 new tokens."""

    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: the most likely token (greedy)
    top_k: int | None = None  # sample among the k most likely tokens only
    batch_size: int = 16  # prompts generated at once
    compile: bool = False  # decode steps through torch.compile (a CUDA graph on a GPU)


# --- Picking the next token -------------------------------------------------------------------


def sample_next(
    logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None
) -> torch.Tensor:
    """The next token of each row from its last logits (B, vocab) -> (B,).

    The chapter's `generate` (ch. 5): keep the top-k logits, then sample from
    softmax(logits / temperature), or take the argmax when the temperature is 0.
    """
    if top_k is not None:
        top_logits, _ = torch.topk(logits, top_k)
        logits = torch.where(logits < top_logits[:, -1:], float("-inf"), logits)
    if temperature > 0.0:
        probs = torch.softmax(logits / temperature, dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
    return logits.argmax(dim=-1)


def fit_context(prompt: list[int], context_length: int) -> list[int]:
    """Cut a prompt from the left, as the chapter's `idx[:, -context_size:]`, leaving room for
    at least one new token: prompt plus new tokens never exceed the context length."""
    if not prompt:
        raise ValueError("cannot generate from an empty prompt")
    return prompt[-(context_length - 1):]


@contextmanager
def eval_mode(model: nn.Module):
    """Dropout off while generating (the chapter calls model.eval() first), then as it was."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


# --- Generation -------------------------------------------------------------------------------


def decode_one_token(
    model: nn.Module, token: torch.Tensor, position: torch.Tensor, mask: torch.Tensor, slot: torch.Tensor
) -> torch.Tensor:
    """One decode step: the next-token logits (B, vocab) after feeding one token per row (B, 1)
    at `position` (B, 1), written to cache slot `slot` (1,), attending to the cache slots `mask`
    (B, 1, 1, slots) allows. Every step has the same shapes (gpt-fast's decode_one_token)."""
    return model(token, position, mask, cache_slots=slot)[:, -1]


@functools.cache
def compiled_decode_one_token(device_type: str) -> Callable[..., torch.Tensor]:
    """decode_one_token through torch.compile, made on first use (importing the compiler takes
    seconds). On a GPU, mode "reduce-overhead" also records the step as a CUDA graph and replays
    it: one launch per step instead of one per kernel, which is what a small model's decode at a
    small batch is bound by. Not fullgraph: the trainer generates with DeepSpeed's engine module,
    whose forward pre-hook is DeepSpeed's Python bookkeeping; what of it dynamo cannot trace runs
    eagerly beside the graph instead of failing the step."""
    mode = "reduce-overhead" if device_type == "cuda" else None
    return torch.compile(decode_one_token, mode=mode, dynamic=False)


@torch.inference_mode()
def generate(
    model: nn.Module,
    prompts: list[list[int]],
    settings: GenerationSettings = GenerationSettings(),
    *,
    generator: torch.Generator | None = None,
    eos_id: int = EOT_TOKEN_ID,
) -> list[list[int]]:
    """The new tokens of each prompt (without the eos), all prompts at once with the KV cache.

    A row stops at `eos_id`, after `settings.max_new_tokens`, or when its prompt plus new tokens
    fill the model's context; the loop stops when every row has stopped. `settings.compile`:
    decode steps through compiled_decode_one_token (the prefill, once per call, stays eager).
    `settings.batch_size` is the caller's business: all `prompts` go in one batch.
    """
    max_new_tokens, temperature, top_k = settings.max_new_tokens, settings.temperature, settings.top_k
    context_length = model.config.context_length
    device = next(model.parameters()).device
    prompts = [fit_context(prompt, context_length) for prompt in prompts]
    lengths = torch.tensor([len(prompt) for prompt in prompts], device=device)
    budgets = (context_length - lengths).clamp(max=max_new_tokens)  # new tokens each row may take
    steps = int(budgets.max())
    if steps <= 0:
        return [[] for _ in prompts]

    # Left padding puts every prompt's last token in the last column, so one prefill gives the
    # next-token logits of all rows, and each decode step writes the same cache slot in all rows.
    width = int(lengths.max())
    idx = torch.tensor([[PAD_TOKEN_ID] * (width - len(p)) + p for p in prompts], device=device)
    pads = width - lengths
    cache_length = width + steps - 1
    if settings.compile:
        # The compiled step is specialised to the cache's shape: rounded up to a power of two, a
        # file of prompts of many widths compiles a few shapes instead of one per width (with 256
        # new tokens: 512, 1024 or 2048 slots, times the batch size and the last batch's, within
        # dynamo's limit of 8 graphs; past it dynamo runs the step eagerly).
        cache_length = 1 << (cache_length - 1).bit_length()
    slots = torch.arange(cache_length, device=device)  # the cache slot of each padded position
    real = slots[None, :] >= pads[:, None]  # (B, slots): False on a row's pads
    positions = (slots[None, :width] - pads[:, None]).clamp(min=0)  # each prompt starts at 0
    # Prefill: a query sees the real tokens up to its own slot, and a pad sees itself only. A query
    # with nothing to attend to is 0/0 in the softmax: recent SDPA kernels return zeros, older
    # ones NaN (pytorch#103749), and a NaN in the cache would poison real rows (pytorch#101967).
    query, key = slots[:width, None], slots[None, :]
    prefill_mask = (key <= query) & (real[:, None, :] | (key == query))  # (B, width, slots)
    decode = compiled_decode_one_token(device.type) if settings.compile else decode_one_token

    new_tokens = []
    with eval_mode(model):
        model.setup_caches(batch_size=len(prompts), max_length=cache_length)
        try:
            logits = model(idx, positions, prefill_mask[:, None], cache_slots=slots[:width], last_only=True)[:, -1]
            done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
            for step in range(steps):
                token = sample_next(logits, temperature, top_k, generator)
                new_tokens.append(token)
                done |= (token == eos_id) | (budgets <= step + 1)
                if done.all():
                    break
                slot = slots[width + step : width + step + 1]
                # Finished rows ride along (their tokens are dropped below); clamping keeps a row
                # whose context is full from asking for a position past the embedding table.
                position = (lengths + step).clamp(max=context_length - 1)
                mask = real & (slots <= slot)  # (B, slots): the row's real tokens so far
                logits = decode(model, token[:, None], position[:, None], mask[:, None, None], slot)
        finally:
            model.clear_caches()

    rows = torch.stack(new_tokens, dim=1).tolist()
    return [_until_eos(row[:budget], eos_id) for row, budget in zip(rows, budgets.tolist())]


def _until_eos(tokens: list[int], eos_id: int) -> list[int]:
    return tokens[: tokens.index(eos_id)] if eos_id in tokens else tokens


@torch.inference_mode()
def generate_recompute(
    model: nn.Module,
    prompt: list[int],
    settings: GenerationSettings = GenerationSettings(),
    *,
    generator: torch.Generator | None = None,
    eos_id: int = EOT_TOKEN_ID,
) -> list[int]:
    """The chapter's generation: one prompt, no cache, the whole sequence fed for every token.

    The same stopping rules as `generate` (which it checks in the tests); `settings.compile` and
    `settings.batch_size` do not apply.
    """
    context_length = model.config.context_length
    device = next(model.parameters()).device
    idx = torch.tensor([fit_context(prompt, context_length)], device=device)
    new_tokens: list[int] = []
    with eval_mode(model):
        while len(new_tokens) < settings.max_new_tokens and idx.size(1) < context_length:
            logits = model(idx)[:, -1]  # as the chapter: every position's logits, the last one used
            token = sample_next(logits, settings.temperature, settings.top_k, generator)
            if token.item() == eos_id:
                break
            new_tokens.append(token.item())
            idx = torch.cat([idx, token[:, None]], dim=1)
    return new_tokens


# --- Responses to instruction entries ---------------------------------------------------------


def extract_response(text: str, prompt: str) -> str:
    """The response in a generated text, as the chapter: what follows the prompt, without the
    "### Response:" header the fine-tuned model writes itself."""
    return text[len(prompt):].replace(RESPONSE_MARK, "").strip()


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices of the prompts of these lengths in batches of similar lengths (less padding to
    compute), the longest first so that running out of memory happens at once rather than at the
    end."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def response_batches(
    model: nn.Module,
    tokenizer,
    entries: list[dict],
    settings: GenerationSettings = GenerationSettings(),
    *,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[list[int], list[str]]]:
    """Yield (entry indices, their responses) batch by batch.

    The prompt is `format_input(entry)` without the "### Response:" header, as the chapter's
    generation loop (ch07 `input_text = format_input(entry)`): the fine-tuned model writes the
    header itself and `extract_response` removes it. Prompting with the header instead would
    change the token stream the model continues, and so the responses the chapter's scores
    were measured on.
    """
    input_texts = [format_input(entry) for entry in entries]
    prompts = [tokenizer.encode(text, allowed_special={ENDOFTEXT}) for text in input_texts]
    for indices in length_sorted_batches([len(p) for p in prompts], settings.batch_size):
        outputs = generate(model, [prompts[i] for i in indices], settings, generator=generator)
        # Decoding only the new tokens equals the chapter's decoding the whole sequence and
        # slicing the prompt off: the prompt's bytes are complete UTF-8 on their own.
        responses = [
            extract_response(input_texts[i] + tokenizer.decode(tokens), input_texts[i])
            for i, tokens in zip(indices, outputs)
        ]
        yield indices, responses


def generate_responses(
    model: nn.Module,
    tokenizer,
    entries: list[dict],
    settings: GenerationSettings = GenerationSettings(),
    *,
    generator: torch.Generator | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> list[str]:
    """The response to every entry, in input order; `on_batch(done, total)` after each batch."""
    responses: list[str] = [""] * len(entries)
    done = 0
    for indices, batch_responses in response_batches(model, tokenizer, entries, settings, generator=generator):
        for i, response in zip(indices, batch_responses):
            responses[i] = response
        done += len(indices)
        if on_batch is not None:
            on_batch(done, len(entries))
    return responses
