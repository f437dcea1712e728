"""The DeepSpeed engine: its config, the client optimizer, the learning-rate schedule, and a plain
copy of its model.

ds_config.json (repo root, or --ds-config) holds what is DeepSpeed's business: the ZeRO stage and
its communication settings, bf16. Batch sizes, optimizer, schedule and clipping belong to the
run's TrainConfig; a user's ds_config that sets them to other values anyway is overridden with
one warning each, as is a stage or precision that --zero-stage or --precision (other than auto)
replaces.

`plain_model` gives the engine's model as a plain GPT, for generation (samples, test responses)
and exports. Under ZeRO 0-2 every rank holds the whole model and the engine's module is used as
it is. Under ZeRO-3 each rank holds a shard: the parameters are gathered once (a collective: every
rank calls it) into a plain GPT on each rank, which then generates without collectives.
Generating through the ZeRO-3 engine would re-gather every layer at every forward (orders of
magnitude slower), and ranks that finish early would leave the others hanging in a gather.
"""

from __future__ import annotations

import contextlib
import copy
import math
from pathlib import Path

import orjson
import torch

from trainer.gpt2.model import GPT
from trainer.training.config import DS_KEYS_OWNED_BY_CONFIG, BatchLayout, TrainConfig

# A clipping threshold no gradient reaches: DeepSpeed computes (and reports) the global gradient
# norm only when clipping is on, and clipping by a factor of exactly 1.0 leaves gradients unchanged.
MEASURE_ONLY_CLIP = 1e12


# Sections of a DeepSpeed config that are objects (DeepSpeed's own parser raises a TypeError that
# names no key when one is not).
DS_OBJECT_SECTIONS = (
    "zero_optimization", "fp16", "bf16", "bfloat16", "amp", "optimizer", "scheduler", "data_types", "checkpoint",
    "timers", "activation_checkpointing", "flops_profiler", "comms_logger", "tensorboard", "wandb", "csv_monitor",
    "comet", "aio", "autotuning", "elasticity", "pipeline", "compression_training", "data_efficiency", "nebula",
    "sparse_attention", "weight_quantization", "hybrid_engine", "curriculum_learning",
)


# Top-level values DeepSpeed reads as they are, with the type its config docs give each
# (deepspeed.ai/docs/config-json): a wrong one fails only at the first step, after the run
# directory is written. Those the run's flags own may also be "auto".
DS_SCALARS = {
    "train_batch_size": "integer", "train_micro_batch_size_per_gpu": "integer", "gradient_accumulation_steps": "integer",
    "steps_per_print": "integer", "gradient_clipping": "number", "gradient_predivide_factor": "number",
    "prescale_gradients": "boolean", "sparse_gradients": "boolean", "wall_clock_breakdown": "boolean",
    "memory_breakdown": "boolean", "dump_state": "boolean", "disable_allgather": "boolean",
    "zero_allow_untested_optimizer": "boolean", "zero_force_ds_cpu_optimizer": "boolean",
    "dataloader_drop_last": "boolean",
}
SCALAR_KINDS = {
    "integer": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "number": ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    "boolean": ("true or false", lambda v: isinstance(v, bool)),
}


def wrong_scalars(user: dict) -> list[str]:
    """What is wrong with the top-level values of DS_SCALARS in a user's DeepSpeed config."""
    wrong = []
    for key, kind in DS_SCALARS.items():
        value = user.get(key)
        if key not in user or (value == "auto" and key in DS_KEYS_OWNED_BY_CONFIG):
            continue
        expected, fits = SCALAR_KINDS[kind]
        if not fits(value):
            wrong.append(f"'{key}' must be {expected}, not {orjson.dumps(value).decode()[:40]}")
    return wrong


# DeepSpeed's pydantic models by the section of the config they validate, to name a rejected key.
DS_MODEL_SECTIONS = {"DeepSpeedZeroConfig": "zero_optimization", "DeepSpeedBF16Config": "bf16",
                     "DeepSpeedFP16Config": "fp16", "DeepSpeedZeroOffloadOptimizerConfig": "zero_optimization.offload_optimizer",
                     "DeepSpeedZeroOffloadParamConfig": "zero_optimization.offload_param"}


def read_ds_config(path: str | Path) -> dict:
    """The user's DeepSpeed config, checked for the shape the run relies on (one line if not)."""
    path = Path(path)
    try:
        user = orjson.loads(path.read_bytes().removeprefix(b"\xef\xbb\xbf"))  # a BOM from Windows editors
    except FileNotFoundError:
        raise ValueError(f"{path}: DeepSpeed config not found (--ds-config)") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a directory, not a DeepSpeed config file (--ds-config)") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror})") from None
    except orjson.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(user, dict):
        raise ValueError(f"{path}: a DeepSpeed config is a JSON object of settings, not a {type(user).__name__}")
    wrong = [f"'{key}' must be an object, not {orjson.dumps(user[key]).decode()[:40]}"
             for key in DS_OBJECT_SECTIONS if key in user and not isinstance(user[key], dict)]
    if wrong:
        raise ValueError(f"{path}: {'; '.join(wrong)} (e.g. \"bf16\": {{\"enabled\": true}})")
    if wrong := wrong_scalars(user):
        raise ValueError(f"{path}: {'; '.join(wrong)}")
    return user


def check_ds_config(ds: dict, path: str | Path) -> None:
    """DeepSpeed's own validation of the config the engine will get, before any file is written:
    each value it rejects named in one line. Needs the process group (DeepSpeed reads the world size)."""
    from deepspeed.runtime.config import DeepSpeedConfig
    from pydantic import ValidationError

    try:
        DeepSpeedConfig(copy.deepcopy(ds))
    except ValidationError as e:
        section = DS_MODEL_SECTIONS.get(e.title, e.title)
        problems = [f"{section}.{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in e.errors()]
        raise ValueError(f"{path}: DeepSpeed rejects {'; '.join(problems)}") from None
    except (AssertionError, ValueError, TypeError, KeyError) as e:
        raise ValueError(f"{path}: DeepSpeed rejects it: {' '.join(str(e).split())[:300]}") from None


def build_ds_config(
    user: dict, config: TrainConfig, layout: BatchLayout, precision: str
) -> tuple[dict, list[str]]:
    """The DeepSpeed config the engine runs with, and the keys of `user` whose concrete values the
    run's flags overrode ("auto", or the value the flags give anyway, override nothing)."""
    ds = copy.deepcopy(user)
    owned = {
        "train_batch_size": layout.global_batch,
        "train_micro_batch_size_per_gpu": layout.micro_batch,
        "gradient_accumulation_steps": layout.grad_accum,
        # DeepSpeed computes (and reports) the global gradient norm only when clipping is on.
        "gradient_clipping": config.grad_clip if config.grad_clip > 0 else MEASURE_ONLY_CLIP,
    }
    overridden = [key for key in DS_KEYS_OWNED_BY_CONFIG
                  if key in ds and ds[key] != "auto" and ds[key] != owned.get(key)]
    for key in ("optimizer", "scheduler"):  # the client optimizer and schedule: build_engine
        ds.pop(key, None)
    ds.update(owned)
    for key, value in decided_by_flags(config, precision).items():
        section, name = key.split(".")
        if user.get(section, {}).get(name, "auto") not in ("auto", value):
            overridden.append(key)
        ds[section] = {**ds.get(section, {}), name: value}
    zero = ds.setdefault("zero_optimization", {})
    zero.setdefault("stage", 2)
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


def decided_by_flags(config: TrainConfig, precision: str) -> dict:
    """The sections' settings the run's flags decide, by dotted key: the ZeRO stage with
    --zero-stage (without it the file's stands), and bf16/fp16 from the run's precision (given,
    or picked by --precision auto for the hardware)."""
    decided = {"zero_optimization.stage": config.zero_stage} if config.zero_stage is not None else {}
    return decided | {"bf16.enabled": precision == "bf16", "fp16.enabled": precision == "fp16"}


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


def plain_model(engine, dtype: torch.dtype | None = None) -> GPT:
    """The engine's model, or a plain copy of it (always under ZeRO-3, or to change its dtype)."""
    module = engine.module
    device = next(module.parameters()).device
    zero3 = engine.zero_optimization_stage() == 3
    if not zero3 and (dtype is None or next(module.parameters()).dtype == dtype):
        return module
    plain = GPT(module.config).to(device)
    params = dict(module.named_parameters())
    if zero3:
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=None)
    else:
        gathered = contextlib.nullcontext()
    with gathered, torch.no_grad():
        for name, target in plain.named_parameters():
            target.copy_(params[name].data)
    plain.eval()
    return plain.to(dtype) if dtype is not None else plain
