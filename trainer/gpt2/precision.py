"""Which floating-point type to compute in: bf16 where the hardware has it, fp32 elsewhere."""

from __future__ import annotations

import torch


def native_bf16(device: torch.device) -> bool:
    """bf16 matmuls in hardware: GPUs that have them, CPUs with AVX512-BF16 or AMX (through oneDNN).
    Elsewhere bf16 is emulated, slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def resolve_precision(requested: str, device: torch.device) -> str:
    if requested != "auto":
        if device.type == "cpu" and requested == "fp16":
            raise ValueError("--precision fp16 is not supported on CPU: use bf16 or fp32")
        return requested
    if device.type == "cuda" and native_bf16(device):  # a CPU stays fp32 (docs/performance.md)
        return "bf16"
    return "fp32"
