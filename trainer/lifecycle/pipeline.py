"""The whole run, from flags to outputs, as a sequence of phases: what `deepspeed launch/train.py` calls.

    plan      check the flags, read the tokenizer and the weights, and check the data: local rank 0
              of each node finds the data file's token cache, or checks every entry when the
              node has none (nothing written yet)
    place     choose the run directory (or the run to resume)
    record    write config.json and ds_config.json (rank 0)
    begin     metrics.jsonl with run_start: from here on RunLifecycle guarantees a run_end
    tokenize  local rank 0 of each node builds the token cache the node lacks, the node's other
              ranks waiting outside any collective; then every rank memory-maps it
    convert   a resume on another number of ranks: rank 0 converts the checkpoint, the others wait
    engine    the DeepSpeed engine, and the checkpoint a resume continues from
    base      --base-responses: the test split answered by the initial weights
    train     the training loop, with checkpoints at epoch ends, every --save-every, on a stop and
              at the end
    finish    the final evaluation, the test responses, the model files and loss.png (a resume of
              a run stopped here takes no training step and does only what is missing)
    judge     --judge-url, after run_end and the other ranks: rank 0 scores the test responses

Order matters for the promise "bad input: one line, non-zero exit, nothing half-written": the
config, tokenizer, data and weights are all checked before the run directory is created. That is
why the data is checked in `plan` but tokenized in `tokenize`: checking a million entries takes
seconds, tokenizing them minutes, and those minutes belong inside the lifecycle, where heartbeats
show them (`tokenize`, `wait_tokenize`), a stop interrupts them and a run_end follows. A token
cache that exists was checked when it was built, so a start that finds one checks nothing. A dry
run has no run directory and no lifecycle: it tokenizes in `plan`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from instruct import atomic_write_json
from trainer.gpt2.model import shape
from trainer.gpt2.precision import resolve_precision
from trainer.lifecycle import checkpoint, resume, signals
from trainer.lifecycle.coordination import Coordinator
from trainer.lifecycle.evals import JudgedEvaluations, forget_after
from trainer.lifecycle.final import answer_with_the_initial_weights, finish
from trainer.lifecycle.judging import JudgeFollow, check_judge, judge
from trainer.lifecycle.run import EXIT_FAILED, RunLifecycle, warn
from trainer.lifecycle.rundir import RunLock, create_run_dir, git_commit, versions, write_config
from trainer.reporting.events import Checkpoint, RunStart
from trainer.reporting.notify import Notifier
from trainer.reporting.runlog import RunLog, Throughput
from trainer.training import distributed
from trainer.training.config import BatchLayout, TrainConfig, batch_layout, validate
from trainer.training.data import InstructionDataset, count_truncated
from trainer.training.engine import build_ds_config, build_engine, check_ds_config, read_ds_config
from trainer.training.faults import TestFaults
from trainer.training.loop import Progress, StopRequested, TrainingLoop, plan_steps
from trainer.training.token_cache import Entries, TokenCache, describe

EXIT_USAGE = 2


@dataclass
class RunData:
    """The instruction data, read through its token cache: the splits' sizes are known from `plan`
    on, their tokens and texts once the `tokenize` phase has mapped the cache."""

    tokenizer: object
    path: Path  # the data file
    cache: TokenCache
    found: bool  # the cache was complete when the run was planned (else this run builds it)
    train: InstructionDataset
    val: InstructionDataset
    val_entries: Entries
    test_entries: Entries
    truncated: tuple[int, int] | None = None  # (examples cut by --max-length, of which the final
    # <|endoftext|> is lost): counted by the tokenize phase
    checked: list[dict] | None = None  # local rank 0 building the cache of a JSON list: its entries,
    # parsed and checked by `plan`, tokenized by the `tokenize` phase (then dropped)


@dataclass
class RunPlan:
    """Everything the run needs that is known before anything is written."""

    layout: BatchLayout
    precision: str
    ds_config: dict
    overridden: list[str]  # keys of the user's DeepSpeed config that the flags override
    data: RunData
    model: torch.nn.Module  # trainer.gpt2.model.GPT (on the meta device for a dry run)
    name: str  # the model's preset name, or the chapter's naming by size (gpt2-82M)
    weights_info: object  # trainer.gpt2.weights.WeightsInfo; None for a dry run


@dataclass
class RunPlace:
    """Where the run lives, and where a resumed one continues from."""

    run_dir: Path
    point: resume.ResumePoint | None  # None: a fresh start
    tag: str | None  # the checkpoint to load (converted to the universal format when the world size changed)


# ---- entry point ---------------------------------------------------------------------------


def main(config: TrainConfig) -> int:
    try:
        validate(config)
    except ValueError as e:  # every rank finds the same: said once (no process group yet, so by
        # the rank the launcher gives each process), every rank exiting non-zero
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    dist_info = distributed.init(config.dist_timeout)
    # Word on a webhook, and the judge following the judged evaluations (rank 0): from the run's
    # start to the end of judging, closed on every path.
    notifier = Notifier(os.environ[config.notify_env], warn) if config.notify_env and dist_info.is_main else None
    follower = JudgeFollow(config) if config.judge_server and config.judge_samples and dist_info.is_main else None
    code, run_dir = EXIT_FAILED, None
    try:
        try:
            code, run_dir = run(config, dist_info, notifier, follower)
        except ValueError as e:  # bad flags or input: identical on every rank, said once
            if dist_info.is_main:
                print(f"error: {e}", file=sys.stderr)
            code = EXIT_USAGE
        finally:
            # After a clean run every rank is alive: meet before tearing down, so that no rank
            # closes its connections while a peer still has collectives in flight (ZeRO-3 ranks
            # have aborted at exit with "terminate called without an active exception"). After a
            # failure a peer may be dead, and a barrier would wait for --dist-timeout.
            distributed.shutdown(barrier=code in (0, EXIT_USAGE, signals.EXIT_INTERRUPTED))
        if code == 0 and run_dir is not None and config.judge_server and dist_info.is_main:
            judge(run_dir, config, notifier)  # the other ranks have finished; a judge that fails never fails the run
    finally:
        if follower is not None:
            follower.wait()
        if notifier is not None:
            notifier.close()
    return code


def run(config: TrainConfig, dist_info, notifier=None, follower=None) -> tuple[int, Path | None]:
    """The exit status, and the run directory (None for a dry run)."""
    if config.expect_ranks is not None and config.expect_ranks != dist_info.world_size:
        raise ValueError(f"--expect-ranks {config.expect_ranks}: the launcher started {dist_info.world_size} "
                         f"rank{'s' if dist_info.world_size != 1 else ''} on {', '.join(dist_info.hosts)} "
                         "(check the --hostfile and its slots)")
    faults = TestFaults.from_environment()
    plan = plan_run(config, dist_info)
    if config.dry_run:
        if dist_info.is_main:
            from trainer.lifecycle.dryrun import report

            report(config, plan.layout, plan.model, plan.name, plan.data, plan.precision,
                   plan.ds_config["zero_optimization"]["stage"])
        return 0, None
    place, lock = place_run(config, dist_info, plan)
    try:
        return run_in(place, lock, config, dist_info, plan, faults, notifier, follower), place.run_dir
    finally:
        if lock is not None:
            lock.release()


def run_in(place: RunPlace, lock: RunLock | None, config: TrainConfig, dist_info, plan: RunPlan,
           faults: TestFaults, notifier, follower) -> int:
    """Every phase from `record` on, in the run directory this launcher holds."""
    if dist_info.is_main:
        record_run(config, dist_info, plan, place)
    with RunLifecycle(place.run_dir, dist_info, config, throughput(plan, dist_info), lock, notifier) as life:
        log = life.begin(run_start(config, dist_info, plan, place))
        life.progress.step = run_start_step(place)
        if place.point is not None and dist_info.is_main:
            forget_after(place.run_dir, life.progress.step)
        tokenize_data(plan.data, life.coordinator, config, faults)
        log.print(describe(plan.data.cache, plan.data.found))
        warn_about_inputs(log, config, plan, life.progress.step)
        convert_checkpoint(config, dist_info, plan, place, life, faults)
        loop = start_engine(config, dist_info, plan, place, life, faults)
        if config.base_responses:
            answer_with_the_initial_weights(loop, place.run_dir, life.coordinator)
        layout = plan.layout
        log.print(f"run {place.run_dir}  model {plan.name}  world {dist_info.world_size}  "
                  f"ZeRO-{loop.engine.zero_optimization_stage()}  {plan.precision}  global batch {layout.global_batch} "
                  f"= {layout.micro_batch} x {layout.grad_accum} x {dist_info.world_size}  {loop.total_steps} steps")
        evals = None
        if config.judge_samples:
            start_follow = (lambda: follower.start(place.run_dir)) if follower is not None else None
            evals = JudgedEvaluations(loop, place.run_dir, start_follow)
        train(loop, place.run_dir, life, evals)
        life.final_val_loss = finish(loop, place.run_dir, life.coordinator)
        log.print(f"done: final val loss {life.final_val_loss:.4f}; outputs in {place.run_dir}")
    return life.exit_code


# ---- plan: nothing written yet ---------------------------------------------------------------


def plan_run(config: TrainConfig, dist_info) -> RunPlan:
    from trainer.gpt2.model import model_name
    from trainer.gpt2.weights import load_model
    from trainer.lifecycle.dryrun import dry_run_model

    layout = batch_layout(config.global_batch, config.micro_batch, config.world_size or dist_info.world_size)
    precision = resolve_precision(config.precision, dist_info.device)
    ds_config, overridden = build_ds_config(read_ds_config(config.ds_config), config, layout, precision)
    # DeepSpeed checks the batch sizes against the process group's world size: a dry run planned
    # for another one (batch_layout checked its sizes) has the rest checked with a batch of this one.
    local_batch = {"train_batch_size": layout.micro_batch * dist_info.world_size, "gradient_accumulation_steps": 1}
    check_ds_config(ds_config if layout.world_size == dist_info.world_size else {**ds_config, **local_batch},
                    config.ds_config)
    weights_info = None
    if config.dry_run:
        model = dry_run_model(config)
    else:
        torch.manual_seed(config.seed)  # identical initial weights on every rank
        with offline_hint():
            model, weights_info = load_model(config.model, config.weights, dropout=config.dropout)
    if config.max_length > model.config.context_length:
        raise ValueError(f"--max-length {config.max_length} exceeds the model's context of "
                         f"{model.config.context_length} tokens")
    with offline_hint():
        data = prepare_data(config, dist_info)
    if config.judge_server and not config.dry_run:
        Coordinator(dist_info, signals.StopSignals(), namespace="plan").run_alone(None, check_judge, config)
    return RunPlan(layout, precision, ds_config, overridden, data, model, model_name(model.config), weights_info)


def prepare_data(config: TrainConfig, dist_info) -> RunData:
    """The tokenizer, the data file, its token cache and the split. Local rank 0 of each node looks
    the cache up, or checks every entry when the node has none; the node's other ranks wait for
    it outside any collective (the check takes seconds per million entries)."""
    from trainer.gpt2.tokenizer import get_tokenizer
    from trainer.training.data import data_file, split_indices
    from trainer.training.token_cache import look_up

    tokenizer = get_tokenizer(config.tokenizer_dir)
    path = data_file(config.data)
    coordinator = Coordinator(dist_info, signals.StopSignals(), namespace="data")
    kept = []  # on the rank that looks up: a JSON list's checked entries, not sent to the others

    def look() -> tuple:
        cache, count, found, checked = look_up(path, tokenizer)
        kept.append(checked)
        return cache, count, found

    cache, count, found = coordinator.run_alone(None, look, per_node=True)
    train, test, val = split_indices(count, config.split, seed=config.seed if config.shuffle_split else None)
    if len(train) < config.global_batch:
        raise ValueError(
            f"{path}: the training split has {len(train)} examples, fewer than --global-batch {config.global_batch}"
        )
    data = RunData(tokenizer=tokenizer, path=path, cache=cache, found=found,
                   train=InstructionDataset(cache, train), val=InstructionDataset(cache, val),
                   val_entries=Entries(cache, val), test_entries=Entries(cache, test),
                   checked=kept[0] if kept else None)
    if config.dry_run:
        tokenize_data(data, coordinator, config, TestFaults())
    return data


@contextlib.contextmanager
def offline_hint():
    """A failed download names every flag that replaces one: offline, all three are needed."""
    from trainer.gpt2.fetch import DownloadError
    from trainer.gpt2.tokenizer import TokenizerError

    try:
        yield
    except (DownloadError, TokenizerError) as e:
        raise ValueError(
            f"{e} [offline: the run fetches the tokenizer, the data and the weights; give local copies "
            "with --tokenizer-dir DIR --data PATH --weights PATH]"
        ) from None


# ---- place: the run directory ----------------------------------------------------------------


def place_run(config: TrainConfig, dist_info, plan: RunPlan) -> tuple[RunPlace, RunLock | None]:
    """Rank 0 decides where the run lives, or which run to resume, and holds its lock (returned on
    rank 0); every rank learns the place before any file is written there."""
    decide = Coordinator(dist_info, signals.StopSignals(), namespace="place")
    held: list[RunLock] = []

    def claim() -> RunPlace:
        if config.resume:
            point = resume.find(config.out, plan.model.config, plan.data.cache.data_sha256, config.global_batch)
            place = RunPlace(point.run_dir, point, point.tag)
        else:
            place = RunPlace(create_run_dir(config.out, plan.name), None, None)
        held.append(RunLock.take(place.run_dir))
        return place

    place = decide.run_alone(None, claim)
    return place, (held[0] if held else None)


def convert_checkpoint(config: TrainConfig, dist_info, plan: RunPlan, place: RunPlace, life: RunLifecycle,
                       faults: TestFaults) -> None:
    """A resume on another number of ranks: DeepSpeed loads only its universal format then. Rank 0
    converts; the others wait outside any collective (trainer/lifecycle/coordination.py)."""
    point = place.point
    if not (point and point.tag and point.progress["world_size"] != dist_info.world_size):
        return

    def convert() -> str:
        faults.maybe_hold(dist_info.rank, "convert", life.coordinator.stop_requested)
        return checkpoint.to_universal(checkpoint.checkpoint_dir(place.run_dir), point.tag, point.zero_stage)

    place.tag = life.coordinator.run_alone("convert", convert)
    plan.ds_config["checkpoint"] = {**plan.ds_config.get("checkpoint", {}), "load_universal": True}


# ---- record: config.json (rank 0) -------------------------------------------------------------


def record_run(config: TrainConfig, dist_info, plan: RunPlan, place: RunPlace) -> None:
    """The run directory with config.json and ds_config.json. A resumed run keeps the provenance
    of its first attempt."""
    place.run_dir.mkdir(parents=True, exist_ok=True)
    if place.point is not None:
        return
    layout = plan.layout
    write_config(place.run_dir, {
        "v": 1,
        "config": config.to_dict(),
        "model": plan.name,
        "architecture": shape(plan.model.config),
        "ds_config": plan.ds_config,
        "precision": plan.precision,
        "layout": {"global_batch": layout.global_batch, "micro_batch": layout.micro_batch,
                   "grad_accum": layout.grad_accum, "world_size": layout.world_size},
        "world_size": dist_info.world_size,
        "hosts": dist_info.hosts,
        "versions": versions(),
        "provenance": provenance(config, plan),
        "created": time.time(),
    })
    atomic_write_json(place.run_dir / "ds_config.json", plan.ds_config)


def provenance(config: TrainConfig, plan: RunPlan) -> dict:
    from trainer.gpt2.tokenizer import tokenizer_files_sha256

    tokenizer_dir = config.tokenizer_dir or os.environ.get("GPT2_TOKENIZER_DIR")
    info, path = plan.weights_info, plan.data.path
    return {
        "data": {"source": config.data, "path": str(path), "sha256": plan.data.cache.data_sha256},
        "tokenizer": tokenizer_files_sha256(tokenizer_dir) if tokenizer_dir else {"tiktoken": "gpt2"},
        "weights": {"source": info.source, "format": info.format, "sha256": info.sha256},
        "git_commit": git_commit(),
    }


# ---- begin: run_start and the warnings ---------------------------------------------------------


def throughput(plan: RunPlan, dist_info) -> Throughput:
    model = plan.model
    device = dist_info.device
    return Throughput(
        non_embedding_params=model.num_parameters(exclude_position_embeddings=True),
        n_layers=model.config.n_layers,
        emb_dim=model.config.emb_dim,
        world_size=dist_info.world_size,
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        precision=plan.precision,
    )


def run_start(config: TrainConfig, dist_info, plan: RunPlan, place: RunPlace) -> RunStart:
    """This attempt's run_start, known before the engine exists (ZeRO-3 would partition the
    parameters it counts)."""
    steps_per_epoch, total_steps = plan_steps(len(plan.data.train), config)
    point, layout = place.point, plan.layout
    return RunStart(
        run_id=place.run_dir.name,
        model=plan.name,
        params=plan.model.num_parameters(),
        world_size=dist_info.world_size,
        hosts=dist_info.hosts,
        zero_stage=plan.ds_config["zero_optimization"]["stage"],
        precision=plan.precision,
        micro_batch=layout.micro_batch,
        global_batch=layout.global_batch,
        grad_accum=layout.grad_accum,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        epochs=config.epochs,
        attempt=point.attempt if point else 1,
        resumed_from_step=run_start_step(place),
    )


def run_start_step(place: RunPlace) -> int:
    """The step this attempt starts from: its checkpoint's, or 0."""
    point = place.point
    return point.progress["step"] if point and point.tag else 0


def warn_about_inputs(log: RunLog, config: TrainConfig, plan: RunPlan, step: int) -> None:
    for key in plan.overridden:
        log.warning(step, f"{config.ds_config} sets '{key}': the run's flags win")
    longer, eot_cut = plan.data.truncated
    if longer:
        log.warning(step, f"{longer} training examples exceed --max-length {config.max_length} and are truncated "
                          f"({eot_cut} of them lose their final <|endoftext|>)")


# ---- tokenize: the token cache ----------------------------------------------------------------


def tokenize_data(data: RunData, coordinator: Coordinator, config: TrainConfig, faults: TestFaults) -> None:
    """Local rank 0 of each node builds the token cache when the node lacks it (heartbeat phase
    `tokenize`; the node's other ranks wait in `wait_tokenize`, outside any collective, for up to
    an hour); a stop ends the build between chunks and leaves no cache. Then every rank maps the
    cache and counts the examples --max-length cuts."""
    def build() -> None:
        if data.cache.manifest() is not None:
            return  # found, or built meanwhile by another node on a shared filesystem

        def between_chunks() -> None:
            faults.maybe_hold(coordinator.dist.rank, "tokenize", coordinator.stop_requested)
            coordinator.check_stop()

        entries = len(data.train) + len(data.val) + len(data.test_entries)
        data.cache.build(data.path, data.tokenizer, entries, between_chunks, data.checked)

    coordinator.run_alone("tokenize", build, per_node=True)
    data.checked = None
    data.cache.map()
    data.truncated = count_truncated(data.train, config.max_length)


# ---- engine: build it, resume into it ----------------------------------------------------------


def start_engine(config: TrainConfig, dist_info, plan: RunPlan, place: RunPlace, life: RunLifecycle,
                 faults: TestFaults) -> TrainingLoop:
    model = plan.model
    model.to(dist_info.device)
    model.activation_checkpointing = config.activation_checkpointing
    if config.compile:
        model.compile(dynamic=True)  # in place: parameter names (checkpoints, exports) unchanged
    _, total_steps = plan_steps(len(plan.data.train), config)
    engine = build_engine(model, plan.ds_config, config, total_steps)
    loop = TrainingLoop(engine=engine, config=config, layout=plan.layout, dist_info=dist_info, data=plan.data,
                        heartbeat=life.heartbeat, log=life.log, stop=life.stop, faults=faults)
    loop.progress = life.progress
    torch.manual_seed(config.seed + dist_info.rank)  # dropout differs per rank, reproducibly
    if place.tag:
        seconds = time.perf_counter()
        point = place.point
        checkpoint.load(engine, checkpoint.checkpoint_dir(place.run_dir), place.tag, dist_info.rank,
                        same_world=point.progress["world_size"] == dist_info.world_size)
        for name in Progress.__dataclass_fields__:
            setattr(loop.progress, name, point.progress[name])
        loop.full_val_loss = point.full_val_loss
        life.heartbeat.step = loop.progress.step
        life.log.print(f"resumed from {place.tag} (step {loop.progress.step}) in {time.perf_counter() - seconds:.1f}s")
    return loop


# ---- train: the loop and its checkpoints --------------------------------------------------------


def train(loop: TrainingLoop, run_dir: Path, life: RunLifecycle, evals: JudgedEvaluations | None) -> None:
    """Train to the end and save the last step (the final phases resume from it); on a stop the
    ranks agreed on, save a checkpoint and stop (re-raised)."""
    config, dist_info, log = loop.config, loop.dist, life.log
    saved_at = {"step": loop.progress.step if loop.progress.step else None}

    def save_checkpoint() -> None:
        if saved_at["step"] == loop.progress.step:
            return  # this step is already saved (a periodic save, then a signal)
        saved_at["step"] = loop.progress.step
        life.heartbeat.phase = "checkpoint"
        seconds = time.perf_counter()
        tag = checkpoint.save(loop.engine, run_dir, loop.progress.to_dict(), dist_info.rank,
                              dist_info.world_size, config.keep_checkpoints)
        log.event(Checkpoint(step=loop.progress.step, path=f"checkpoints/{tag}", seconds=time.perf_counter() - seconds))
        life.heartbeat.phase = "idle"

    def on_step_end(result) -> None:
        if result.skipped:
            return
        if evals is not None:
            evals(loop.progress.step)
        if config.save_every and loop.progress.step % config.save_every == 0:
            save_checkpoint()

    log.start_training(loop.total_steps, loop.progress.step)
    try:
        loop.run(on_step_end=on_step_end, on_epoch_end=save_checkpoint)
    except StopRequested:
        log.stop_training()
        save_checkpoint()
        raise
    finally:
        log.stop_training()
    save_checkpoint()
