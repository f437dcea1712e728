"""GPT-2, as one readable file.

The architecture of Radford et al. 2019 ("Language Models are Unsupervised Multitask Learners"),
as implemented in OpenAI's gpt-2 and Hugging Face's GPT2LMHeadModel: learned position embeddings,
pre-LayerNorm blocks, fused qkv projection with bias, GELU (tanh approximation), a final LayerNorm.
Module names follow nanoGPT's model.py, which follow the Hugging Face names, so converting
weights is a matter of transposing the Conv1D matrices (see trainer/gpt2/weights.py).

Attention goes through torch.nn.functional.scaled_dot_product_attention (flash / memory-efficient
kernels on GPUs). For generation, a KVCache (gpt-fast style: preallocated per layer) lets a decode
step feed one token per row. For packed training rows (trainer/training/packing.py) the mask is either a
boolean tensor (SDPA) or a FlexAttention BlockMask, which skips the blocks no query may see.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, flex_attention
from torch.utils.checkpoint import checkpoint

@functools.cache
def compiled_flex_attention():
    # FlexAttention is fast only compiled (eager, it is a reference implementation that
    # materialises the scores). Made on first use: torch.compile imports the compiler (seconds).
    return torch.compile(flex_attention, dynamic=False)


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 50257
    context_length: int = 1024
    emb_dim: int = 768
    n_layers: int = 12
    n_heads: int = 12
    dropout: float = 0.0  # the chapter fine-tunes with drop_rate 0.0
    qkv_bias: bool = True
    # The pretrained checkpoints tie the output head to the token embedding; the chapter's
    # fine-tuned .pth files carry their own out_head, and loading one builds an untied model.
    tie_embeddings: bool = True


# Sizes from the GPT-2 paper / the Hugging Face configs (the chapter's BASE_CONFIG + model_configs).
PRESETS: dict[str, GPTConfig] = {
    "gpt2-small": GPTConfig(emb_dim=768, n_layers=12, n_heads=12),
    "gpt2-medium": GPTConfig(emb_dim=1024, n_layers=24, n_heads=16),
    "gpt2-large": GPTConfig(emb_dim=1280, n_layers=36, n_heads=20),
    "gpt2-xl": GPTConfig(emb_dim=1600, n_layers=48, n_heads=25),
    # For tests: the real vocabulary and context (so the real tokenizer and data work), tiny width.
    "tiny": GPTConfig(emb_dim=64, n_layers=2, n_heads=4),
}

DEFAULT_MODEL = "gpt2-medium"  # the chapter's

# The chapter names its fine-tuned files after the model and its size in millions.
CHAPTER_SIZE_NAMES = {
    "gpt2-small": "gpt2-small124M",
    "gpt2-medium": "gpt2-medium355M",
    "gpt2-large": "gpt2-large774M",
    "gpt2-xl": "gpt2-xl1558M",
    "tiny": "tiny",
}


def preset(name: str, **overrides) -> GPTConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model '{name}': choose one of {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides)


# What makes two GPT-2s the same model: the fields that shape the weights. Dropout is a training
# setting and a tied head is the same model stored once.
SHAPE_FIELDS = ("vocab_size", "context_length", "emb_dim", "n_layers", "n_heads", "qkv_bias")


def shape(config: GPTConfig) -> dict:
    return {field: getattr(config, field) for field in SHAPE_FIELDS}


def parameter_count(config: GPTConfig) -> int:
    """Unique parameters of the architecture with a tied head (how GPT-2 sizes are named)."""
    c, t, v = config.emb_dim, config.context_length, config.vocab_size
    attention = 3 * c * c + (3 * c if config.qkv_bias else 0) + c * c + c
    block = 2 * c + attention + 2 * c + (4 * c * c + 4 * c) + (4 * c * c + c)
    return v * c + t * c + config.n_layers * block + 2 * c


def model_name(config: GPTConfig) -> str:
    """The preset this architecture is, else the chapter's naming by size: "gpt2-82M"."""
    for name, candidate in PRESETS.items():
        if shape(candidate) == shape(config):
            return name
    return f"gpt2-{round(parameter_count(config) / 1e6)}M"


class KVCache(nn.Module):
    """Keys and values of one layer for every cache slot of a generation, preallocated.

    `update(k, v, slots)` writes the new keys/values at the cache slots `slots` (a tensor of T
    slot numbers) and returns the whole cache, written or not: the attention mask hides the slots
    a query may not see. The shapes never change during a generation, so a decode step is the same
    computation at every step (gpt-fast's KVCache), which is what torch.compile without
    recompilation and CUDA graphs need. All rows of a batch share the slot numbers; rows of
    different prompt lengths are handled by left padding plus the mask.
    """

    def __init__(self, batch_size: int, n_heads: int, max_length: int, head_dim: int, dtype, device):
        super().__init__()
        shape = (batch_size, n_heads, max_length, head_dim)
        # Zeros, not empty: an unwritten slot is masked out, but a NaN in it would still poison the
        # softmax's matmul (pytorch#101967).
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k.index_copy_(2, slots, k)
        self.v.index_copy_(2, slots, v)
        return self.k, self.v


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        assert config.emb_dim % config.n_heads == 0, "emb_dim must be divisible by n_heads"
        self.n_heads = config.n_heads
        self.head_dim = config.emb_dim // config.n_heads
        self.c_attn = nn.Linear(config.emb_dim, 3 * config.emb_dim, bias=config.qkv_bias)
        self.c_proj = nn.Linear(config.emb_dim, config.emb_dim)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)
        self.cache: KVCache | None = None

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, cache_slots: torch.Tensor | None = None):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, heads, T, head_dim)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        if self.cache is not None and cache_slots is not None:
            k, v = self.cache.update(k, v, cache_slots)
        y = self.attend(q, k, v, attn_mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask) -> torch.Tensor:
        """softmax(q k^T / sqrt(head_dim), masked) v for every head: (B, heads, T, head_dim)."""
        dropout_p = self.dropout if self.training else 0.0
        if attn_mask is None:
            # Plain causal self-attention over the T positions (training, full recomputation).
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        if isinstance(attn_mask, BlockMask):
            # Packed rows on GPUs (trainer/training/packing.py). FlexAttention has no attention dropout.
            if dropout_p:
                raise ValueError("packed rows with a BlockMask take no attention dropout: use --dropout 0")
            return compiled_flex_attention()(q, k, v, block_mask=attn_mask)
        # attn_mask: bool (B or 1, 1, T, keys), True where a query may attend.
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.emb_dim, 4 * config.emb_dim)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's GELU is the tanh approximation
        self.c_proj = nn.Linear(4 * config.emb_dim, config.emb_dim)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.emb_dim, eps=1e-5)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.emb_dim, eps=1e-5)
        self.mlp = MLP(config)

    def forward(self, x, attn_mask=None, cache_slots=None):
        x = x + self.attn(self.ln_1(x), attn_mask=attn_mask, cache_slots=cache_slots)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        # Recompute each block's activations in the backward instead of keeping them (Chen et al.
        # 2016, "Training Deep Nets with Sublinear Memory Cost"): the forward keeps only each
        # block's input, for a second forward pass (about a third more compute). A switch of the
        # training run, not of the architecture: it changes no weight and no output, so it is not
        # in GPTConfig.
        self.activation_checkpointing = False
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.emb_dim),
                wpe=nn.Embedding(config.context_length, config.emb_dim),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layers)]),
                ln_f=nn.LayerNorm(config.emb_dim, eps=1e-5),
            )
        )
        self.lm_head = nn.Linear(config.emb_dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)
        # GPT-2 scales the residual projections by 1/sqrt(2 * n_layers) (paper, section 2.3).
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layers))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self, exclude_position_embeddings: bool = False) -> int:
        """Unique parameters (a tied head counts once)."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_position_embeddings:
            n -= self.transformer.wpe.weight.numel()
        return n

    def forward(
        self,
        idx: torch.Tensor,
        positions: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        cache_slots: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits (B, T, vocab) for token ids idx (B, T).

        positions: (B, T) or (T,) position ids; default 0..T-1 (training, full recomputation).
        attn_mask: bool mask broadcastable to (B, heads, T, keys), True = may attend; default causal.
            Or a FlexAttention BlockMask (packed rows on GPUs, trainer/training/packing.py).
        cache_slots: with caches set up (setup_caches), the cache slot of each of the T tokens (T,).
        last_only: logits of the last position only, (B, 1, vocab): a generation prefill needs
            no more, and the vocabulary projection is the largest matmul of a short prompt.
        """
        B, T = idx.shape
        if positions is None:
            if T > self.config.context_length:
                raise ValueError(f"sequence of {T} tokens exceeds the context length {self.config.context_length}")
            positions = torch.arange(T, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(positions)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            if self.activation_checkpointing and self.training:
                # Non-reentrant: the recommended variant, which torch.compile and ZeRO-3 hooks follow.
                x = checkpoint(block, x, attn_mask, cache_slots, use_reentrant=False)
            else:
                x = block(x, attn_mask=attn_mask, cache_slots=cache_slots)
        x = self.transformer.ln_f(x[:, -1:] if last_only else x)
        return self.lm_head(x)

    def setup_caches(self, batch_size: int, max_length: int, dtype=None, device=None) -> None:
        """Preallocate a KVCache of max_length slots per layer for one generation."""
        p = self.transformer.wte.weight
        dtype = dtype or p.dtype
        device = device or p.device
        for block in self.transformer.h:
            attn = block.attn
            attn.cache = KVCache(batch_size, attn.n_heads, max_length, attn.head_dim, dtype, device)

    def clear_caches(self) -> None:
        for block in self.transformer.h:
            block.attn.cache = None
