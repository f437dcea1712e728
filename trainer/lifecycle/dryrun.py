"""`--dry-run`: what a run would do, without training (`--world-size N`: on N ranks, planned from anywhere).

Memory per rank for the model states (parameters, gradients, Adam moments) at each ZeRO stage,
after Rajbhandari et al. 2020 ("ZeRO", section 3): with mixed precision, 2 bytes/param for the
16-bit weights, 2 for the 16-bit gradients and K = 12 for the fp32 master weights and the two Adam
moments; in fp32 there are no 16-bit copies (4 + 4 + 8). Stages 2 and 3 also print DeepSpeed's own
estimators. Activations come on top and depend on the batch.
"""

from __future__ import annotations

from trainer.training.loop import plan_steps


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

    from trainer.gpt2.model import DEFAULT_MODEL, GPT, preset

    if config.weights not in ("auto", "none"):
        from trainer.gpt2.weights import load_model

        return load_model(config.model, config.weights)[0]
    with torch.device("meta"):
        return GPT(preset(config.model or DEFAULT_MODEL))


def largest_layer_params(model) -> int:
    return max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())


def report(config, layout, model, name: str, data, precision: str, zero_stage: int) -> None:
    """Plain lines (not a table): they go into logs and scripts as well as terminals."""
    import numpy as np
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    from trainer.training.token_cache import describe

    params = model.num_parameters()
    steps_per_epoch, total_steps = plan_steps(len(data.train), config)
    target_tokens = np.minimum(data.train.lengths, config.max_length)  # n tokens + <|endoftext|> - 1
    mean_tokens = float(target_tokens.mean())
    cache_bytes = sum(f.stat().st_size for f in data.cache.folder.iterdir())
    lines = [
        f"model           {name} ({params:,} parameters), {precision}",
        f"batch           global {layout.global_batch} = micro {layout.micro_batch} x accumulation "
        f"{layout.grad_accum} x world {layout.world_size}",
        f"examples        train {len(data.train):,}, val {len(data.val):,}, test {len(data.test_entries):,}",
        f"steps           {steps_per_epoch:,} per epoch, {total_steps:,} in total ({config.epochs} epochs)",
        f"tokens per step ~{mean_tokens * layout.global_batch:,.0f} target tokens (mean example {mean_tokens:.1f})",
        f"truncated       {data.truncated[0]:,} examples exceed --max-length {config.max_length} "
        f"({data.truncated[1]:,} of them lose their final <|endoftext|>)",
        describe(data.cache, data.found),
        f"data memory     {cache_bytes / 1024**2:,.1f} MiB of token cache per node, memory-mapped: its ranks share "
        "the pages, each holding only those it reads",
        f"memory per rank for model states (parameters, gradients, Adam), world size {layout.world_size}, "
        "activations extra:",
    ]
    gib = 1024**3
    for stage in range(4):
        line = f"  ZeRO-{stage}  {model_state_bytes(params, layout.world_size, stage, precision) / gib:8.2f} GiB (ZeRO paper)"
        if stage == 2:
            _, gpu = estimate_zero2_model_states_mem_needs(params, layout.world_size, 1, cpu_offload=False)
            line += f"  {gpu / gib:8.2f} GiB (DeepSpeed estimator)"
        elif stage == 3:
            _, gpu, _ = estimate_zero3_model_states_mem_needs(
                params, largest_layer_params(model), layout.world_size, 1, cpu_offload=False
            )
            line += f"  {gpu / gib:8.2f} GiB (DeepSpeed estimator)"
        if stage == zero_stage:
            line += "  <- this run"
        lines.append(line)
    print("\n".join(lines))
