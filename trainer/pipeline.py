"""The whole run, from flags to outputs: what `deepspeed launch/train.py` calls.

Order matters for the promise "bad input: one line, non-zero exit, nothing half-written": the
config, tokenizer, data and weights are all checked before the run directory is created.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from trainer import distributed
from trainer.config import TrainConfig, batch_layout, validate
from trainer.engine import build_ds_config, build_engine, read_ds_config, resolve_precision
from trainer.metrics import Heartbeat, MetricsWriter
from trainer.model import GPT
from trainer.rundir import default_run_dir, git_commit, sha256_file, versions, write_config
from trainer.runlog import RunLog

EXIT_FAILED = 1
EXIT_USAGE = 2


@dataclass
class RunData:
    tokenizer: object
    train: object  # trainer.data.InstructionDataset
    val: object
    train_entries: list[dict]
    val_entries: list[dict]
    test_entries: list[dict]
    path: Path
    truncated: tuple[int, int]  # (examples cut by --max-length, of which the final <|endoftext|> is lost)


def prepare_data(config: TrainConfig) -> RunData:
    from trainer.data import InstructionDataset, count_truncated, load_instruction_data, split_entries
    from trainer.tokenizer import get_tokenizer

    tokenizer = get_tokenizer(config.tokenizer_dir)
    entries, path = load_instruction_data(config.data)
    train, test, val = split_entries(entries, config.split, seed=config.seed if config.shuffle_split else None)
    if len(train) < config.global_batch:
        raise ValueError(
            f"{path}: the training split has {len(train)} examples, fewer than --global-batch {config.global_batch}"
        )
    if not val:
        raise ValueError(f"{path}: the validation split is empty: lower the fractions of --split")
    train_ds = InstructionDataset(train, tokenizer)
    return RunData(
        tokenizer=tokenizer,
        train=train_ds,
        val=InstructionDataset(val, tokenizer),
        train_entries=train,
        val_entries=val,
        test_entries=test,
        path=Path(path),
        truncated=count_truncated(train_ds, config.max_length),
    )


def provenance(config: TrainConfig, data: RunData, weights_info) -> dict:
    from trainer.tokenizer import tokenizer_files_sha256

    tokenizer_dir = config.tokenizer_dir or os.environ.get("GPT2_TOKENIZER_DIR")
    return {
        "data": {"source": config.data, "path": str(data.path), "sha256": sha256_file(data.path)},
        "tokenizer": tokenizer_files_sha256(tokenizer_dir) if tokenizer_dir else {"tiktoken": "gpt2"},
        "weights": {"source": weights_info.source, "format": weights_info.format, "sha256": weights_info.sha256},
        "git_commit": git_commit(),
    }


def choose_run_dir(config: TrainConfig, dist_info) -> Path:
    """Rank 0 decides, every rank learns it before any file is written."""
    chosen = None
    if dist_info.is_main:
        chosen = str(Path(config.out) if config.out else default_run_dir(config.model))
    chosen = Path(distributed.broadcast_object(chosen))
    if (chosen / "metrics.jsonl").exists():
        raise ValueError(f"{chosen}: already holds a run: pass --resume to continue it, or another --out")
    return chosen


def main(config: TrainConfig) -> int:
    try:
        validate(config)
    except ValueError as e:  # every rank finds the same: the launcher shows each rank's line
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    dist_info = distributed.init(config.dist_timeout)
    try:
        return run(config, dist_info)
    except ValueError as e:  # bad flags or input: identical on every rank, said once
        if dist_info.is_main:
            print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        distributed.shutdown()


def run(config: TrainConfig, dist_info) -> int:
    from trainer.weights import load_model

    layout = batch_layout(config.global_batch, config.micro_batch, dist_info.world_size)
    precision = resolve_precision(config.precision, dist_info.device)
    ds_config, overridden = build_ds_config(read_ds_config(config.ds_config), config, layout, precision)
    data = prepare_data(config)
    if config.dry_run:
        if dist_info.is_main:
            from trainer.dryrun import dry_run_model, report

            report(config, layout, dry_run_model(config), data, precision, ds_config["zero_optimization"]["stage"])
        return 0
    torch.manual_seed(config.seed)  # identical initial weights on every rank
    model, weights_info = load_model(config.model, config.weights, dropout=config.dropout)

    run_dir = choose_run_dir(config, dist_info)
    heartbeat = Heartbeat(run_dir, dist_info.rank, dist_info.local_rank, config.heartbeat_every).start()
    writer = None
    if dist_info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_config(
            run_dir,
            {
                "v": 1,
                "config": config.to_dict(),
                "ds_config": ds_config,
                "precision": precision,
                "layout": {"global_batch": layout.global_batch, "micro_batch": layout.micro_batch,
                           "grad_accum": layout.grad_accum, "world_size": layout.world_size},
                "world_size": dist_info.world_size,
                "hosts": dist_info.hosts,
                "versions": versions(),
                "provenance": provenance(config, data, weights_info),
                "created": time.time(),
            },
        )
        from instruct import atomic_write_json

        atomic_write_json(run_dir / "ds_config.json", ds_config)
        writer = MetricsWriter(run_dir / "metrics.jsonl")
    device_name = torch.cuda.get_device_name(dist_info.device) if dist_info.device.type == "cuda" else None
    log = RunLog(
        writer,
        {
            "non_embedding_params": model.num_parameters(exclude_position_embeddings=True),
            "n_layers": model.config.n_layers,
            "emb_dim": model.config.emb_dim,
        },
        device_name,
        precision,
    )
    for key in overridden:
        log.print(f"[yellow]warning:[/] {config.ds_config} sets '{key}': the run's flags win")
    if data.truncated[0]:
        log.print(
            f"[yellow]warning:[/] {data.truncated[0]} training examples exceed --max-length {config.max_length} "
            f"and are truncated ({data.truncated[1]} of them lose their final <|endoftext|>)"
        )

    from trainer.loop import Trainer, plan_steps

    model.to(dist_info.device)
    _, total_steps = plan_steps(len(data.train), config)
    engine = build_engine(model, ds_config, config, total_steps, device=dist_info.device)
    trainer = Trainer(engine=engine, config=config, layout=layout, dist_info=dist_info, data=data,
                      heartbeat=heartbeat, log=log)
    torch.manual_seed(config.seed + dist_info.rank)  # dropout differs per rank, reproducibly
    status, error, final_val_loss = "failed", None, None
    log.run_start(
        run_id=run_dir.name,
        model=config.model,
        params=model.num_parameters(),
        world_size=dist_info.world_size,
        hosts=dist_info.hosts,
        zero_stage=engine.zero_optimization_stage(),
        precision=precision,
        micro_batch=layout.micro_batch,
        global_batch=layout.global_batch,
        grad_accum=layout.grad_accum,
        steps_per_epoch=trainer.steps_per_epoch,
        total_steps=trainer.total_steps,
        epochs=config.epochs,
        attempt=1,
        resumed_from_step=0,
    )
    log.print(
        f"run {run_dir}  model {config.model}  world {dist_info.world_size}  ZeRO-{engine.zero_optimization_stage()}  "
        f"{precision}  global batch {layout.global_batch} = {layout.micro_batch} x {layout.grad_accum} x "
        f"{dist_info.world_size}  {trainer.total_steps} steps"
    )
    try:
        log.start_progress(trainer.total_steps, trainer.progress.step)
        trainer.run()
        log.stop_progress()
        final_val_loss = trainer.evaluate(full=True)[1]
        finish(trainer, run_dir, log)
        status = "completed"
        log.print(f"done: final val loss {final_val_loss:.4f}; outputs in {run_dir}")
        return 0
    except Exception as e:
        log.stop_progress()
        error = f"{type(e).__name__}: {e}".splitlines()[0]
        traceback.print_exc()
        return EXIT_FAILED
    finally:
        heartbeat.stop()
        if writer is not None:
            log.event(
                "run_end",
                status=status,
                error=error,
                step=trainer.progress.step,
                tokens_total=trainer.progress.tokens_total,
                elapsed_s=time.time() - log.started,
                final_val_loss=final_val_loss,
            )
            writer.close()


def finish(trainer, run_dir: Path, log: RunLog) -> None:
    """Test responses (all ranks), exports and the loss plot (rank 0)."""
    from trainer.consolidate import plain_model
    from trainer.outputs import export_model, generate_test_responses, plot_losses

    final = plain_model(trainer.engine)  # collective under ZeRO-3
    generate_test_responses(trainer, run_dir, final)
    if trainer.dist.is_main:
        exportable = final.float() if final is not trainer.engine.module else plain_model(trainer.engine, torch.float32)
        export_model(exportable, run_dir, trainer.config.model)
        plot_losses(log.history, run_dir / "loss.png")
