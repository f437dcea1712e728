"""`--dry-run`: what a run would do, without training.

Memory per rank for the model states (parameters, gradients, Adam moments) at each ZeRO stage,
after Rajbhandari et al. 2020 ("ZeRO", section 3): with mixed precision, 2 bytes/param for the
16-bit weights, 2 for the 16-bit gradients and K = 12 for the fp32 master weights and the two Adam
moments; in fp32 there are no 16-bit copies (4 + 4 + 8). Stages 2 and 3 also print DeepSpeed's own
estimators. Activations come on top and depend on the batch.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from trainer.loop import plan_steps


def model_state_bytes(params: int, world_size: int, stage: int, precision: str) -> float:
    weights, grads, optim = (4, 4, 8) if precision == "fp32" else (2, 2, 12)
    n = world_size
    if stage == 0:
        per = weights + grads + optim
        return params * per
    if stage == 1:
        return params * (weights + grads + optim / n)
    if stage == 2:
        return params * (weights + (grads + optim) / n)
    return params * (weights + grads + optim) / n


def dry_run_model(config):
    """The model's shape without its weights: no download, no memory (the meta device)."""
    import torch

    from trainer.model import GPT, preset

    if config.weights not in ("auto", "none"):
        from trainer.weights import load_model

        return load_model(config.model, config.weights)[0]
    with torch.device("meta"):
        return GPT(preset(config.model))


def largest_layer_params(model) -> int:
    return max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())


def report(config, layout, model, data, precision: str, zero_stage: int) -> None:
    console = Console()
    params = model.num_parameters()
    steps_per_epoch, total_steps = plan_steps(len(data.train), config)
    lengths = [n + 1 for n in data.train.lengths]  # +1: the appended <|endoftext|>
    mean_tokens = sum(min(n, config.max_length) - 1 for n in lengths) / len(lengths)
    table = Table(title="dry run", show_header=False)
    table.add_row("model", f"{config.model} ({params:,} parameters)")
    table.add_row("precision", precision)
    table.add_row(
        "batch",
        f"global {layout.global_batch} = micro {layout.micro_batch} x accumulation {layout.grad_accum} "
        f"x world {layout.world_size}",
    )
    table.add_row("examples", f"train {len(data.train)}  val {len(data.val)}  test {len(data.test_entries)}")
    table.add_row("steps", f"{steps_per_epoch} per epoch, {total_steps} in total ({config.epochs} epochs)")
    table.add_row("tokens per step", f"~{mean_tokens * layout.global_batch:,.0f} target tokens (mean example {mean_tokens:.1f})")
    table.add_row(
        "truncated",
        f"{data.truncated[0]} examples exceed --max-length {config.max_length} "
        f"(of which {data.truncated[1]} keep no response token)",
    )
    console.print(table)

    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    memory = Table(title=f"model-state memory per rank (world size {layout.world_size}; activations extra)")
    memory.add_column("ZeRO stage")
    memory.add_column("ZeRO paper", justify="right")
    memory.add_column("DeepSpeed estimator", justify="right")
    gib = 1024**3
    for stage in range(4):
        estimate = "-"
        if stage == 2:
            _, gpu = estimate_zero2_model_states_mem_needs(params, layout.world_size, 1, cpu_offload=False)
            estimate = f"{gpu / gib:.2f} GiB"
        elif stage == 3:
            _, gpu, _ = estimate_zero3_model_states_mem_needs(
                params, largest_layer_params(model), layout.world_size, 1, cpu_offload=False
            )
            estimate = f"{gpu / gib:.2f} GiB"
        marker = " (this run)" if stage == zero_stage else ""
        memory.add_row(
            f"{stage}{marker}",
            f"{model_state_bytes(params, layout.world_size, stage, precision) / gib:.2f} GiB",
            estimate,
        )
    console.print(memory)
