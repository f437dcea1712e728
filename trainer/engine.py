"""The DeepSpeed engine: its config, the client optimizer and the learning-rate schedule.

ds_config.json (repo root, or --ds-config) holds what is DeepSpeed's business: the ZeRO stage and
its communication settings, bf16. Batch sizes, optimizer, schedule and clipping belong to the
run's TrainConfig; a user's ds_config that sets them anyway is overridden with one warning.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import orjson
import torch

from trainer.config import DS_KEYS_OWNED_BY_CONFIG, BatchLayout, TrainConfig

# A clipping threshold no gradient reaches: DeepSpeed computes (and reports) the global gradient
# norm only when clipping is on, and clipping by a factor of exactly 1.0 leaves gradients unchanged.
MEASURE_ONLY_CLIP = 1e12


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


def read_ds_config(path: str | Path) -> dict:
    path = Path(path)
    try:
        return orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise ValueError(f"{path}: DeepSpeed config not found (--ds-config)") from None
    except orjson.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def build_ds_config(
    user: dict, config: TrainConfig, layout: BatchLayout, precision: str
) -> tuple[dict, list[str]]:
    """The DeepSpeed config the engine runs with, and the keys that the run's flags overrode."""
    ds = copy.deepcopy(user)
    overridden = [key for key in DS_KEYS_OWNED_BY_CONFIG if key in ds]
    for key in ("optimizer", "scheduler"):
        ds.pop(key, None)
    ds["train_batch_size"] = layout.global_batch
    ds["train_micro_batch_size_per_gpu"] = layout.micro_batch
    ds["gradient_accumulation_steps"] = layout.grad_accum
    ds["gradient_clipping"] = config.grad_clip if config.grad_clip > 0 else MEASURE_ONLY_CLIP
    zero = ds.setdefault("zero_optimization", {})
    if config.zero_stage is not None:
        zero["stage"] = config.zero_stage
    zero.setdefault("stage", 2)
    ds["bf16"] = {**ds.get("bf16", {}), "enabled": precision == "bf16"}
    ds["fp16"] = {**ds.get("fp16", {}), "enabled": precision == "fp16"}
    if precision != "bf16" or zero["stage"] == 0:
        # fp32 gradient accumulation is a ZeRO option for bf16 weights; without ZeRO, DeepSpeed
        # refuses the mix and keeps bf16 gradients with fp32 master weights (its FP16_Optimizer).
        ds.get("data_types", {}).pop("grad_accum_dtype", None)
    # The trainer measures its own step times (docs/metrics.md). DeepSpeed's throughput timer runs
    # in a forward pre-hook of the model, which --compile traces; on CUDA it calls
    # torch.cuda.synchronize(None) there, which dynamo cannot trace (an InternalTorchDynamoError
    # from the third step on).
    ds["timers"] = {"throughput": {"enabled": False}}
    ds.setdefault("zero_allow_untested_optimizer", True)  # the client optimizer is torch's AdamW
    return ds, overridden


def lr_lambda(schedule: str, warmup_steps: int, total_steps: int):
    """Multiplier of the base lr at a given optimizer step: linear warmup, then constant or cosine."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def build_engine(model: torch.nn.Module, ds_config: dict, config: TrainConfig, total_steps: int):
    import deepspeed

    # The chapter's optimizer: AdamW over every parameter, weight decay 0.1. Fused: one kernel
    # over all the parameters, on CUDA and on CPUs alike (unfused, torch loops over the tensors on
    # a CPU: 0.42 s of a 4 s gpt2-small step here). DeepSpeed's own FusedAdam would JIT-build
    # with nvcc.
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(config.schedule, config.warmup_steps, total_steps)
    )
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
    )
    return engine
