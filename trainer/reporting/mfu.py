"""Model FLOPs utilisation (docs/metrics.md, "MFU"): one definition for the trainer and the benchmarks."""

from __future__ import annotations

import re

# Dense peak throughput in FLOP/s by device-name words and dtype (docs/metrics.md).
# Checked in order: the first found as whole words in torch.cuda.get_device_name() wins
# ("NVIDIA L4" is an L4; "NVIDIA L40S" is not).
PEAK_FLOPS = [
    ("H100 PCIe", {"bf16": 756e12, "fp16": 756e12, "fp32": 51e12}),
    ("H100", {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}),
    ("H200", {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}),
    ("A100", {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12}),
    ("L4", {"bf16": 121e12, "fp16": 121e12, "fp32": 30e12}),
]


def peak_flops(device_name: str | None, precision: str) -> float | None:
    """The device's dense peak for `precision` ("bf16", "fp16", "fp32"); None when unknown."""
    if not device_name:
        return None
    for words, peaks in PEAK_FLOPS:
        if re.search(rf"\b{re.escape(words)}\b", device_name):
            return peaks.get(precision)
    return None


def flops_per_token(non_embedding_params: int, n_layers: int, emb_dim: int, seq_len: int) -> float:
    """Training FLOPs per token: nanoGPT's estimate_mfu, after PaLM (Chowdhery et al. 2022, app. B).

    6N for the forward and backward matmuls of the weights plus 12 * L * d * T for attention's
    QK^T and AV. N excludes the position embedding (a lookup, no matmul) but keeps the token
    embedding, which is also the output head.
    """
    return 6 * non_embedding_params + 12 * n_layers * emb_dim * seq_len


def mfu(
    tokens_per_s_per_device: float,
    non_embedding_params: int,
    n_layers: int,
    emb_dim: int,
    seq_len: int,
    device_name: str | None,
    precision: str,
) -> float | None:
    """Model FLOPs utilisation in 0..1; None when the device's peak is unknown (e.g. a CPU)."""
    peak = peak_flops(device_name, precision)
    if peak is None:
        return None
    achieved = flops_per_token(non_embedding_params, n_layers, emb_dim, seq_len) * tokens_per_s_per_device
    return achieved / peak
