"""Fault tolerance with the real deepspeed launcher, 2 CPU ranks, the tiny preset: kill -9 between
checkpoints, SIGTERM, a dead rank, a hung rank, a NaN, and resuming on another number of ranks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.trainer.launcher import (REPO, TINY, events, kill_group, of_type, rank_processes, shared_memory_buffers,
                                    start, step_logged, train, wait, wait_for)
from tests.trainer.reference import reference_steps

pytestmark = pytest.mark.slow

# Shuffled batches and dropout 0.1: exact resume needs the data position and every rank's RNG.
RUN = [*TINY, "--max-new-tokens", "4", "--eval-every", "0", "--max-steps", "6", "--save-every", "2",
       "--dropout", "0.1"]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "tiny-sft.pth", weights_only=True)


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def losses_by_step(run_dir: Path) -> dict[int, float]:
    """The loss logged for each step; a replayed step must log the same loss as before."""
    seen: dict[int, float] = {}
    for e in of_type(events(run_dir), "train"):
        assert seen.setdefault(e["step"], e["loss"]) == e["loss"], f"step {e['step']} replayed differently"
    return seen


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = start([*RUN, "--out", str(out)])
    code, log = wait(proc)
    assert code == 0, log[-3000:]
    assert not shared_memory_buffers(proc.master_port)
    return out


def test_checkpoints_rotate_and_are_announced(reference):
    directory = reference / "checkpoints"
    assert (directory / "latest").read_text().strip() == "global_step6"
    assert sorted(p.name for p in directory.glob("global_step*")) == ["global_step4", "global_step6"]
    for tag in ("global_step4", "global_step6"):
        assert {p.name for p in (directory / tag).glob("rng-rank*.pt")} == {"rng-rank0.pt", "rng-rank1.pt"}
    assert [(e["step"], e["path"]) for e in of_type(events(reference), "checkpoint")] == [
        (2, "checkpoints/global_step2"), (4, "checkpoints/global_step4"), (6, "checkpoints/global_step6")]


def test_sigkill_between_checkpoints_then_resume_is_exact(reference, tmp_path, no_leftovers):
    out = tmp_path / "run"
    proc = start([*RUN, "--out", str(out)])
    try:
        wait_for(lambda: step_logged(out, 3), 240, "step 3")  # after the checkpoint at step 2
    finally:
        kill_group(proc, signal.SIGKILL)
    proc.communicate()
    assert (out / "checkpoints" / "latest").read_text().strip() == "global_step2"
    assert not shared_memory_buffers(proc.master_port)  # no 66 MB per rank left in /dev/shm

    code, log = train([*RUN, "--out", str(out), "--resume"])
    assert code == 0, log[-3000:]
    starts = of_type(events(out), "run_start")
    assert [(s["attempt"], s["resumed_from_step"]) for s in starts] == [(1, 0), (2, 2)]
    difference = max_difference(weights(out), weights(reference))
    print(f"SIGKILL + resume: max |dw| = {difference:.3g}")
    assert difference <= 1e-6
    assert losses_by_step(out) == losses_by_step(reference)


def test_sigterm_stops_at_a_step_with_a_checkpoint_and_resume_is_exact(reference, tmp_path, no_leftovers):
    out = tmp_path / "run"
    args = [*RUN[:-4], "--save-every", "0", "--dropout", "0.1"]  # no periodic checkpoints
    proc = start([*args, "--out", str(out)])
    wait_for(lambda: step_logged(out, 2), 240, "step 2")
    signalled = time.monotonic()
    kill_group(proc, signal.SIGTERM)  # as Ctrl-C or scancel: every process of the job
    code, log = wait(proc, timeout=60)
    assert code != 0
    wait_for(lambda: not rank_processes(out), 35, "the ranks to exit")
    assert time.monotonic() - signalled < 30
    end = events(out)[-1]
    assert end["type"] == "run_end" and end["status"] == "interrupted", end
    stopped_at = end["step"]
    assert of_type(events(out), "checkpoint")[-1]["step"] == stopped_at
    assert (out / "checkpoints" / "latest").read_text().strip() == f"global_step{stopped_at}"

    code, log = train([*args, "--out", str(out), "--resume"])
    assert code == 0, log[-3000:]
    difference = max_difference(weights(out), weights(reference))
    print(f"SIGTERM at step {stopped_at} + resume: max |dw| = {difference:.3g}")
    assert difference <= 1e-6


def test_a_dead_rank_fails_the_run_and_names_it(tmp_path, no_leftovers, monkeypatch, webhook):
    """A rank killed mid-run: the survivors fail the run within --dist-timeout, naming it in a
    `rank_lost` alert, in run_end and on the --notify-env webhook."""
    monkeypatch.setenv("RUN_WEBHOOK", webhook.url)
    out = tmp_path / "run"
    proc = start([*TINY, "--max-new-tokens", "4", "--eval-every", "0", "--max-steps", "500",
                  "--dist-timeout", "30", "--notify-env", "RUN_WEBHOOK", "--out", str(out)])
    wait_for(lambda: step_logged(out, 2), 240, "step 2")
    [rank1] = [p for p in rank_processes(out) if "--local_rank=1" in p.cmdline()]
    # DeepSpeed did make its shared-memory buffers, and their names are already gone.
    maps = Path(f"/proc/{rank1.pid}/maps").read_text()
    assert f"_{proc.master_port}_1 (deleted)" in maps and "deepspeed_allreduce_buffer_" in maps
    killed = time.monotonic()
    rank1.kill()
    code, log = wait(proc, timeout=30 + 30)
    assert code != 0
    wait_for(lambda: not rank_processes(out), 40, "the survivors to exit")
    assert time.monotonic() - killed < 30 + 10  # --dist-timeout plus a few seconds
    end = events(out)[-1]
    assert end["type"] == "run_end" and end["status"] == "failed"
    assert end["error"].startswith("lost rank 1"), end["error"]
    [alert] = [e for e in of_type(events(out), "alert") if e["kind"] == "rank_lost"]
    assert (alert["rank"], alert["message"]) == (1, "lost rank 1")
    texts = [m["text"] for m in webhook.messages]
    assert any(f"rank_lost at step {alert['step']}: lost rank 1" in t for t in texts), texts
    assert any(t.startswith(f"{out.name}: run failed at step ") and "lost rank 1" in t for t in texts), texts
    # The killed rank could not clean up; its 66 MB all-reduce buffer must not stay in /dev/shm.
    assert not shared_memory_buffers(proc.master_port)


def test_a_hung_rank_stays_visible_in_its_heartbeats(tmp_path, no_leftovers, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setenv("GPT2_INSTRUCT_TEST_STALL", "1:3:20")  # rank 1 sleeps 20 s before step 3
    proc = start([*TINY, "--max-new-tokens", "2", "--eval-every", "0", "--max-steps", "4",
                  "--dist-timeout", "120", "--out", str(out)])
    try:
        heartbeats = out / "ranks" / "rank-1.jsonl"
        wait_for(lambda: step_logged(out, 2), 240, "step 2")
        time.sleep(3)
        first = events(out, "ranks/rank-1.jsonl")
        time.sleep(8)
        later = events(out, "ranks/rank-1.jsonl")
        assert heartbeats.exists() and len(later) >= len(first) + 3  # still beating
        stuck = later[-1]
        assert stuck["step"] == 2 and stuck["phase"] == "data"  # not in a collective
        assert stuck["phase_since"] == first[-1]["phase_since"]  # and for a while
        rank0 = events(out, "ranks/rank-0.jsonl")[-1]
        assert rank0["step"] == 2 and rank0["phase"] == "backward"  # waiting in the all-reduce
    finally:
        code, log = wait(proc, timeout=240)
    assert code == 0, log[-3000:]


def test_a_nan_on_one_rank_skips_the_whole_global_batch(tmp_path, no_leftovers, monkeypatch):
    from trainer.gpt2.weights import load_model

    out = tmp_path / "run"
    monkeypatch.setenv("GPT2_INSTRUCT_TEST_NAN", "1:1:0")  # rank 1, epoch 1, first global batch
    code, log = train([*TINY, "--max-new-tokens", "2", "--eval-every", "0", "--max-steps", "1", "--out", str(out)])
    assert code == 0, log[-3000:]
    [alert] = of_type(events(out), "alert")
    assert alert["kind"] == "nonfinite_loss" and alert["rank"] == 1
    assert alert["step"] == 0  # an alert's step is the last finished step
    assert [e["step"] for e in of_type(events(out), "train")] == [1]
    # The one step taken is the one a run that never saw batch 0 takes: on batch 1.
    trained = load_model("tiny", str(out / "tiny-sft.pth"))[0].state_dict()
    expected, _ = reference_steps([1], [5e-5])
    assert max(float((trained[k] - expected[k]).abs().max()) for k in expected) <= 1e-6


def test_too_many_bad_steps_fail_the_run(tmp_path, no_leftovers, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setenv("GPT2_INSTRUCT_TEST_NAN", "0:1:0")
    code, log = train([*TINY, "--max-new-tokens", "2", "--eval-every", "0", "--max-steps", "3",
                       "--max-bad-steps", "1", "--out", str(out)])
    assert code != 0
    end = events(out)[-1]
    assert end["status"] == "failed" and "--max-bad-steps 1" in end["error"]


def test_resume_on_one_rank_after_two(tmp_path, no_leftovers):
    # A micro-batch that fits the memory: on 1 rank, accumulation doubles to keep the global batch.
    args = [*TINY, "--max-new-tokens", "2", "--eval-every", "0", "--max-steps", "6", "--save-every", "3",
            "--zero-stage", "2", "--micro-batch", "4"]
    reference_dir = tmp_path / "reference"
    code, log = train([*args, "--out", str(reference_dir)])
    assert code == 0, log[-3000:]

    out = tmp_path / "run"
    proc = start([*args, "--out", str(out)])
    try:
        wait_for(lambda: step_logged(out, 4), 240, "step 4")
    finally:
        kill_group(proc, signal.SIGKILL)
    proc.communicate()
    code, log = train([*args, "--out", str(out), "--resume"], ranks=1)
    assert code == 0, log[-3000:]
    assert (out / "checkpoints" / "global_step3_universal").is_dir()
    last = of_type(events(out), "run_start")[-1]
    assert (last["world_size"], last["grad_accum"], last["global_batch"]) == (1, 2, 8)
    difference = max_difference(weights(out), weights(reference_dir))
    print(f"2 -> 1 ranks: max |dw| = {difference:.3g}")
    assert difference <= 1e-4
    # Rank 1's heartbeat file stays, naming a process long gone: no lost rank, no ghost.
    assert not [e for e in of_type(events(out), "alert") if e["kind"] == "rank_lost"]
    once = subprocess.run([sys.executable, "-m", "tui", str(out), "--once"], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    lines = once.stdout.splitlines()
    ranks = lines[lines.index("ranks") + 2:lines.index("ranks") + 4]
    assert ranks[0].split()[0] == "0" and not (ranks[1].split() or ["?"])[0].isdigit(), once.stdout


def test_resume_refuses_a_different_run(reference, tmp_path):
    cases = [
        (["--global-batch", "16"], "cannot resume with a different --global-batch: the run has 8, now 16"),
        (["--model", "gpt2-small"], "cannot resume with another model: the run trains tiny (a GPT-2 of emb_dim 64, "),
    ]
    changed = tmp_path / "data.json"
    changed.write_bytes(Path(TINY[5]).read_bytes().replace(b"friend", b"fiend", 1))
    cases.append((["--data", str(changed)], "cannot resume with a different --data (sha256)"))
    for extra, message in cases:
        proc = subprocess.run(
            [sys.executable, str(REPO / "launch" / "train.py"), *TINY, "--out", str(reference), "--resume", *extra],
            capture_output=True, text=True, timeout=120, cwd=REPO, env={**os.environ, "DS_ACCELERATOR": "cpu"},
        )
        assert proc.returncode == 2, proc.stderr[-2000:]
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]


def test_export_consolidates_a_zero3_checkpoint_without_its_ranks(tmp_path, no_leftovers):
    from trainer.gpt2.weights import load_model

    out = tmp_path / "run"
    code, log = train([*TINY, "--max-new-tokens", "2", "--eval-every", "0", "--max-steps", "4",
                       "--save-every", "2", "--zero-stage", "3", "--out", str(out)])
    assert code == 0, log[-3000:]
    for step in (None, 2):
        cmd = [sys.executable, "-m", "trainer.export", str(out)] + ([] if step is None else ["--step", str(step)])
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
        assert proc.returncode == 0, proc.stderr[-2000:]
    final = load_model("tiny", str(out / "exports" / "global_step4" / "tiny-sft.pth"))[0].state_dict()
    trained = load_model("tiny", str(out / "tiny-sft.pth"))[0].state_dict()
    assert max(float((final[k] - trained[k]).abs().max()) for k in trained) <= 1e-6
    early = load_model(None, str(out / "exports" / "global_step2" / "hf"))[0].state_dict()
    assert max(float((early[k] - trained[k]).abs().max()) for k in trained) > 0  # an earlier model
    proc = subprocess.run([sys.executable, "-m", "trainer.export", str(out), "--step", "3"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2 and "no complete checkpoint at step 3 (there are: 2, 4)" in proc.stderr
