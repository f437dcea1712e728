"""The whole run, from flags to outputs: what `deepspeed launch/train.py` calls.

Order matters for the promise "bad input: one line, non-zero exit, nothing half-written": the
config, tokenizer, data and weights are all checked before the run directory is created.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from instruct import atomic_write_json
from trainer import checkpoint, distributed, resume, signals
from trainer.config import TrainConfig, batch_layout, validate
from trainer.engine import build_ds_config, build_engine, read_ds_config, resolve_precision
from trainer.metrics import Heartbeat, MetricsWriter
from trainer.loop import Progress
from trainer.fetch import sha256_file
from trainer.rundir import default_run_dir, git_commit, versions, write_config
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


@contextlib.contextmanager
def offline_hint():
    """A failed download names every flag that replaces one: offline, all three are needed."""
    from trainer.fetch import DownloadError
    from trainer.tokenizer import TokenizerError

    try:
        yield
    except (DownloadError, TokenizerError) as e:
        raise ValueError(
            f"{e} [offline: the run fetches the tokenizer, the data and the weights; give local copies "
            "with --tokenizer-dir DIR --data PATH --weights PATH]"
        ) from None


def on_main(dist_info, fn, *args):
    """Run fn on rank 0 only; every rank gets its result, or raises its error as a ValueError."""
    result = error = None
    if dist_info.is_main:
        try:
            result = fn(*args)
        except (ValueError, RuntimeError) as e:
            error = str(e)
    result, error = distributed.broadcast_object((result, error))
    if error is not None:
        raise ValueError(error)
    return result


def new_run_dir(config: TrainConfig) -> Path:
    chosen = Path(config.out) if config.out else default_run_dir(config.model)
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
    code = EXIT_FAILED
    try:
        code = run(config, dist_info)
        return code
    except ValueError as e:  # bad flags or input: identical on every rank, said once
        if dist_info.is_main:
            print(f"error: {e}", file=sys.stderr)
        code = EXIT_USAGE
        return code
    finally:
        # After a clean run every rank is alive: meet before tearing down, so that no rank closes
        # its connections while a peer still has collectives in flight (ZeRO-3 ranks have aborted
        # at exit with "terminate called without an active exception"). After a failure a peer
        # may be dead, and a barrier would wait for --dist-timeout.
        distributed.shutdown(barrier=code in (0, EXIT_USAGE, signals.EXIT_INTERRUPTED))


def run(config: TrainConfig, dist_info) -> int:
    from trainer.weights import load_model

    layout = batch_layout(config.global_batch, config.micro_batch, dist_info.world_size)
    precision = resolve_precision(config.precision, dist_info.device)
    ds_config, overridden = build_ds_config(read_ds_config(config.ds_config), config, layout, precision)
    with offline_hint():
        data = prepare_data(config)
    if config.dry_run:
        if dist_info.is_main:
            from trainer.dryrun import dry_run_model, report

            report(config, layout, dry_run_model(config), data, precision, ds_config["zero_optimization"]["stage"])
        return 0
    torch.manual_seed(config.seed)  # identical initial weights on every rank
    with offline_hint():
        model, weights_info = load_model(config.model, config.weights, dropout=config.dropout)

    # The run directory: rank 0 decides, every rank learns it before any file is written.
    if config.resume:
        point = on_main(dist_info, resume.find, config.out, config.model, data.path, config.global_batch)
        run_dir = point.run_dir
    else:
        point = None
        run_dir = on_main(dist_info, new_run_dir, config)
    resume_tag = point.tag if point else None
    if point and point.tag and point.progress["world_size"] != dist_info.world_size:
        # Another number of ranks: DeepSpeed needs its universal checkpoint format.
        resume_tag = on_main(dist_info, checkpoint.to_universal, checkpoint.checkpoint_dir(run_dir),
                             point.tag, point.zero_stage)
        ds_config["checkpoint"] = {**ds_config.get("checkpoint", {}), "load_universal": True}

    heartbeat = Heartbeat(run_dir, dist_info.rank, dist_info.local_rank, config.heartbeat_every).start()
    writer = None
    if dist_info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if point is None:  # a resumed run keeps the provenance of its first attempt
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

    from trainer.loop import StopRequested, Trainer, plan_steps

    model.to(dist_info.device)
    model.activation_checkpointing = config.activation_checkpointing
    if config.compile:
        model.compile(dynamic=True)  # in place: parameter names (checkpoints, exports) unchanged
    _, total_steps = plan_steps(len(data.train), config)
    engine = build_engine(model, ds_config, config, total_steps)
    trainer = Trainer(engine=engine, config=config, layout=layout, dist_info=dist_info, data=data,
                      heartbeat=heartbeat, log=log)
    torch.manual_seed(config.seed + dist_info.rank)  # dropout differs per rank, reproducibly
    ckpt_dir = checkpoint.checkpoint_dir(run_dir)
    if resume_tag:
        seconds = time.perf_counter()
        checkpoint.load(engine, ckpt_dir, resume_tag, dist_info.rank,
                        same_world=point.progress["world_size"] == dist_info.world_size)
        trainer.progress = Progress(**{k: point.progress[k] for k in Progress.__dataclass_fields__})
        trainer.resumed_from_step = trainer.progress.step
        heartbeat.step = trainer.progress.step
        log.print(f"resumed from {resume_tag} (step {trainer.progress.step}) in {time.perf_counter() - seconds:.1f}s")

    saved_at = {"step": trainer.progress.step if resume_tag else None}

    def save_checkpoint() -> None:
        if saved_at["step"] == trainer.progress.step:
            return  # this step is already saved (a periodic save, then a signal)
        saved_at["step"] = trainer.progress.step
        heartbeat.phase = "checkpoint"
        seconds = time.perf_counter()
        tag = checkpoint.save(engine, run_dir, trainer.progress.to_dict(), dist_info.rank,
                              dist_info.world_size, config.keep_checkpoints)
        log.event("checkpoint", step=trainer.progress.step, path=f"checkpoints/{tag}",
                  seconds=time.perf_counter() - seconds)
        heartbeat.phase = "idle"

    def on_step_end(result) -> None:
        if config.save_every and not result.skipped and trainer.progress.step % config.save_every == 0:
            save_checkpoint()

    def on_epoch_end() -> None:
        save_checkpoint()

    stop = signals.StopSignals().install()
    trainer.stop_signals = stop
    status, error, final_val_loss = "failed", None, None

    def on_lost(ranks: list[int]) -> None:  # the watchdog's thread, while the main one is stuck
        if writer is not None:
            log.event("alert", step=trainer.progress.step, kind="rank_lost",
                      message=f"lost rank {', '.join(map(str, ranks))}", rank=ranks[0])
            end_event("failed", f"lost rank {', '.join(map(str, ranks))} (no heartbeat; this rank stuck in a collective)")

    def end_event(status: str, error: str | None, final_val_loss: float | None = None) -> None:
        log.event("run_end", status=status, error=error, step=trainer.progress.step,
                  tokens_total=trainer.progress.tokens_total, elapsed_s=time.time() - log.started,
                  final_val_loss=final_val_loss)

    watchdog = signals.LostRankWatchdog(heartbeat, run_dir / "ranks", on_lost,
                                        grace_s=3 * config.heartbeat_every + 1).start()
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
        attempt=point.attempt if point else 1,
        resumed_from_step=trainer.resumed_from_step,
    )
    log.print(
        f"run {run_dir}  model {config.model}  world {dist_info.world_size}  ZeRO-{engine.zero_optimization_stage()}  "
        f"{precision}  global batch {layout.global_batch} = {layout.micro_batch} x {layout.grad_accum} x "
        f"{dist_info.world_size}  {trainer.total_steps} steps"
    )
    exit_code = EXIT_FAILED
    try:
        log.start_progress(trainer.total_steps, trainer.progress.step)
        trainer.run(on_step_end=on_step_end, on_epoch_end=on_epoch_end)
        log.stop_progress()
        final_val_loss = trainer.evaluate(full=True)[1]
        finish(trainer, run_dir)
        status, exit_code = "completed", 0
        log.print(f"done: final val loss {final_val_loss:.4f}; outputs in {run_dir}")
    except StopRequested:
        log.stop_progress()
        save_checkpoint()
        status, exit_code = "interrupted", signals.EXIT_INTERRUPTED
        error = f"stopped by {stop.name or 'a signal on another rank'} at step {trainer.progress.step}; resume with --resume"
        log.event("alert", step=trainer.progress.step, kind="signal", message=error, rank=None)
        log.print(f"[yellow]{error}[/]")
    except Exception as e:
        log.stop_progress()
        error = f"{type(e).__name__}: {e}".splitlines()[0]
        if dist_info.world_size > 1:
            lost = signals.silent_ranks(run_dir / "ranks", 2 * config.heartbeat_every + 1)
            if lost:
                error = f"lost rank {', '.join(map(str, lost))}: {error}"
        traceback.print_exc()
    finally:
        watchdog.close()
        stop.uninstall()
        heartbeat.stop()
        if writer is not None:
            end_event(status, error, final_val_loss)
            writer.close()
    return exit_code


def finish(trainer, run_dir: Path) -> None:
    """Test responses (all ranks), exports and the loss plot (rank 0)."""
    from trainer.consolidate import plain_model
    from trainer.outputs import export_model, generate_test_responses, plot_losses

    final = plain_model(trainer.engine)  # collective under ZeRO-3
    generate_test_responses(trainer, run_dir, final)
    if trainer.dist.is_main:
        exportable = final.float() if final is not trainer.engine.module else plain_model(trainer.engine, torch.float32)
        export_model(exportable, run_dir, trainer.config.model)
        plot_losses(run_dir / "metrics.jsonl", run_dir / "loss.png")
