"""llama.cpp as the GGUF tests and benchmark drive it: a randomised GPT-2 whose every tensor matters,
and greedy decoding of a GGUF in this process through llama-cpp-python, with each step's logits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainer.gpt2.generation import fit_context
from trainer.gpt2.model import GPT, GPTConfig
from trainer.gpt2.tokenizer import EOT_TOKEN_ID

SCALE = 0.2  # of every perturbation: large enough that answers differ from prompt to prompt
WIDTH = 64  # the input width at which a matrix's entries have std SCALE


def randomised_gpt(config: GPTConfig, seed: int) -> GPT:
    """Every weight and bias random, every LayerNorm scale 1 + noise: a mis-mapped, untransposed or
    dropped tensor changes the answers. A matrix's std shrinks with its input width (SCALE at
    WIDTH), so that every layer's output, and the logits, keep the same size in a wider model: with
    a fixed std, gpt2-small's activations grow until ggml's f16 GELU table alone parts its answers
    from PyTorch's."""
    model = GPT(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            std = SCALE * (WIDTH / p.shape[-1]) ** 0.5 if p.ndim == 2 else SCALE
            noise = torch.randn(p.shape, generator=generator) * std
            p.copy_(1 + noise if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")) else noise)
    return model.eval()


def load(path: Path, context_length: int):
    """The GGUF loaded by llama.cpp, in this process, with the model's whole context."""
    from llama_cpp import Llama

    return Llama(str(path), n_ctx=context_length, n_batch=context_length, n_threads=2, verbose=False)


@dataclass
class Continuation:
    tokens: list[int]  # the new tokens, without the eos
    logits: list[np.ndarray]  # the logits each new token (and the eos, if any) was picked from


def greedy(llm, prompt: list[int], max_new_tokens: int) -> Continuation:
    """The argmax continuation of `prompt`, stopping as trainer.gpt2.generation.generate stops: at the
    eos, after max_new_tokens, or when prompt plus new tokens fill the model's context (llama.cpp
    aborts the process past it; its own n_ctx is rounded up to a multiple of 256, so it is no
    guard). `Llama.scores` stays zero without logits_all: the logits are read from the context."""
    import llama_cpp

    context_length = int(llm.metadata["gpt2.context_length"])
    prompt = fit_context(prompt, context_length)
    budget = min(max_new_tokens, context_length - len(prompt))
    llm.reset()
    llm.eval(prompt)
    out = Continuation([], [])
    while len(out.tokens) < budget:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),)).copy()
        out.logits.append(logits)
        token = int(logits.argmax())
        if token == EOT_TOKEN_ID:
            break
        out.tokens.append(token)
        if len(out.tokens) < budget:
            llm.eval([token])
    return out


def first_difference(a: list[int], b: list[int]) -> int | None:
    """The first position where two continuations differ (a length, where one stops first), or None."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))
