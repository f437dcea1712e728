"""A run's lifecycle with the real launcher, 2 CPU ranks, the tiny preset: a stop in each final
phase is written within 30 s and resumed without a training step, a failure before the engine
exists still gets its run_end, and rank 0's solo work does not trip --dist-timeout.

GPT2_INSTRUCT_TEST_HOLD=rank:phase:seconds keeps a rank in a phase, as slow work there would.
"""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import orjson
import pytest

from tests.trainer.launcher import DATA, TINY, events, kill_group, of_type, rank_processes, start, train, wait, wait_for
from trainer.reporting.metrics import read_events

pytestmark = pytest.mark.slow

RUN = [*TINY, "--max-steps", "2", "--eval-every", "0", "--max-new-tokens", "4"]


def heartbeat(out: Path, rank: int) -> dict:
    """The rank's last complete heartbeat, polled while it writes."""
    beats = read_events(out / "ranks" / f"rank-{rank}.jsonl")
    return beats[-1] if beats else {}


def written(out: Path) -> list[dict]:
    """metrics.jsonl so far, polled while rank 0 writes."""
    return read_events(out / "metrics.jsonl")


def attempts(out: Path) -> list[list[dict]]:
    """metrics.jsonl cut at each run_start: the events of each attempt."""
    cut: list[list[dict]] = []
    for event in events(out):
        if event["type"] == "run_start":
            cut.append([])
        cut[-1].append(event)
    return cut


def stop_in(out: Path, proc, rank0_phase: str) -> dict:
    """Wait until rank 0 is held in `rank0_phase` after the last step, SIGTERM the whole job (as
    Ctrl-C or scancel), and return the run_end, checking it came within 30 s."""
    wait_for(lambda: of_type(written(out), "checkpoint") and heartbeat(out, 0).get("phase") == rank0_phase,
             240, f"rank 0 in {rank0_phase}")
    signalled = time.monotonic()
    kill_group(proc, signal.SIGTERM)
    wait_for(lambda: written(out)[-1]["type"] == "run_end", 30, "run_end")
    assert time.monotonic() - signalled < 30
    code, log = wait(proc, timeout=60)
    assert code != 0
    end = events(out)[-1]
    assert end["status"] == "interrupted" and end["final_val_loss"] is None, end
    return end


def assert_resumed_without_training(out: Path) -> list[dict]:
    """The last attempt took no step and completed the run; its events."""
    last = attempts(out)[-1]
    assert last[0]["resumed_from_step"] == 2 and not of_type(last, "train")
    assert last[-1]["type"] == "run_end" and last[-1]["status"] == "completed", last[-1]
    for name in ("instruction-data-with-response.json", "tiny-sft.pth", "hf/model.safetensors", "loss.png"):
        assert (out / name).is_file(), name
    assert len(orjson.loads((out / "instruction-data-with-response.json").read_bytes())) == 110
    return last


def test_stop_in_the_final_evaluation_then_a_failing_and_a_good_resume(tmp_path, no_leftovers, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setenv("GPT2_INSTRUCT_TEST_HOLD", "0:final_eval:120")
    stop_in(out, start([*RUN, "--out", str(out)]), "eval")
    monkeypatch.delenv("GPT2_INSTRUCT_TEST_HOLD")

    # A resume that fails after run_start, before the engine runs a step (a damaged checkpoint):
    # its run_start still gets exactly one run_end, `failed`, with the error in one line.
    states = out / "checkpoints" / "global_step2" / "mp_rank_00_model_states.pt"
    shutil.copy(states, tmp_path / "states.pt")
    states.write_bytes(b"not a checkpoint")
    code, log = train([*RUN, "--out", str(out), "--resume"])
    assert code != 0
    failed = attempts(out)[-1]
    assert [e["type"] for e in failed].count("run_end") == 1 and failed[-1]["type"] == "run_end"
    assert failed[-1]["status"] == "failed" and failed[-1]["final_val_loss"] is None
    assert "\n" not in failed[-1]["error"] and failed[-1]["error"], failed[-1]

    shutil.copy(tmp_path / "states.pt", states)
    code, log = train([*RUN, "--out", str(out), "--resume"])
    assert code == 0, log[-3000:]
    last = assert_resumed_without_training(out)
    assert [e["full"] for e in of_type(last, "eval")] == [True]  # the final evaluation, done now


def journalled(out: Path, rank: int | None = None) -> dict[int, str]:
    """The responses journalled so far (by one rank, or by all), polled while ranks write: as the
    trainer reads them, a line counts once its newline is written."""
    found = {}
    pattern = f"model_response.rank-{'*' if rank is None else rank}.jsonl"
    for path in (out / "responses").glob(pattern):
        for line in path.read_bytes().split(b"\n")[1:-1]:  # the header; a torn or empty last piece
            record = orjson.loads(line)
            found[record["index"]] = record["response"]
    return found


def test_generation_is_shared_by_demand_stopped_killed_and_resumed_on_other_numbers_of_ranks(
        tmp_path, no_leftovers, monkeypatch):
    """Rank 1 held before its first batch: rank 0 takes batch after batch from the shared counter,
    well past its half. Stopped there (SIGTERM), resumed and killed mid-way (SIGKILL), resumed on 1
    rank: the last attempt generates exactly the responses no journal holds (its rank 0 logs every
    batch), and every journalled response is the one in the final file."""
    out = tmp_path / "run"
    slow = [*RUN[:-2], "--max-new-tokens", "64", "--generate-batch", "1", "--out", str(out)]
    monkeypatch.setenv("GPT2_INSTRUCT_TEST_HOLD", "1:generate:300")
    proc = start(slow)
    wait_for(lambda: len(journalled(out, 0)) > 60, 240, "rank 0 past half of the responses")
    kill_group(proc, signal.SIGTERM)
    wait_for(lambda: written(out)[-1]["type"] == "run_end", 30, "run_end")
    assert wait(proc, timeout=60)[0] != 0
    monkeypatch.delenv("GPT2_INSTRUCT_TEST_HOLD")
    assert events(out)[-1]["status"] == "interrupted"
    by_rank_0 = journalled(out, 0)
    assert 60 < len(by_rank_0) < 110 and not journalled(out, 1), len(by_rank_0)  # rank 1 took none

    proc = start([*slow, "--resume"])
    wait_for(lambda: len(journalled(out)) >= len(by_rank_0) + 6, 240, "six more responses")
    kill_group(proc, signal.SIGKILL)
    proc.communicate()
    kept = journalled(out)
    assert len(kept) < 110 and all(kept[i] == response for i, response in by_rank_0.items())

    code, log = train([*slow, "--resume"], ranks=1)
    assert code == 0, log[-3000:]
    last = assert_resumed_without_training(out)
    progress = of_type(last, "generate")[:-1]  # one per batch of 1, then the merged total
    assert len(progress) == 110 - len(kept) and min(e["done"] for e in progress) == len(kept) + 1
    answers = orjson.loads((out / "instruction-data-with-response.json").read_bytes())
    assert all(answers[i]["model_response"] == response for i, response in kept.items())
    assert sorted(p.name for p in (out / "responses").iterdir()) == ["model_response.json"]  # journals merged


def test_stop_in_the_export_then_resume(tmp_path, no_leftovers, monkeypatch):
    """Stopped in the export, with --base-responses: the resume writes the model files, and
    regenerates neither the test responses nor the base ones."""
    out = tmp_path / "run"
    monkeypatch.setenv("GPT2_INSTRUCT_TEST_HOLD", "0:export:120")
    proc = start([*RUN, "--base-responses", "--out", str(out)])
    wait_for(lambda: heartbeat(out, 0).get("phase") == "export", 240, "rank 0 exporting")
    wait_for(lambda: heartbeat(out, 1).get("phase") == "wait_export", 10, "rank 1 waiting for it")
    stop_in(out, proc, "export")
    monkeypatch.delenv("GPT2_INSTRUCT_TEST_HOLD")
    assert not (out / "tiny-sft.pth").exists()
    responses = (out / "instruction-data-with-response.json").read_bytes()
    base = out / "responses" / "base_response.json"
    base_before = (base.read_bytes(), base.stat().st_mtime_ns)

    code, log = train([*RUN, "--base-responses", "--out", str(out), "--resume"])
    assert code == 0, log[-3000:]
    last = assert_resumed_without_training(out)
    assert not of_type(last, "eval") and not of_type(last, "generate")  # only the export was missing
    assert (out / "instruction-data-with-response.json").read_bytes() == responses
    assert (base.read_bytes(), base.stat().st_mtime_ns) == base_before and "base responses" not in log
    answers = orjson.loads(responses)
    assert all(isinstance(a["base_response"], str) for a in answers) and len(answers) == 110


def test_rank_0_exporting_alone_does_not_trip_the_collective_timeout(tmp_path, no_leftovers, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setenv("GPT2_INSTRUCT_TEST_HOLD", "0:export:15")
    code, log = train([*RUN, "--dist-timeout", "5", "--out", str(out)])
    assert code == 0, log[-3000:]
    assert events(out)[-1]["status"] == "completed"
    assert not rank_processes(out)


def test_ctrl_c_twice_exits_at_once_and_still_ends_the_run(tmp_path, no_leftovers, monkeypatch):
    """Ctrl-C, then Ctrl-C again while the ranks cannot agree yet (rank 0 in a slow step): rank 0
    exits at once, and its run_start still gets exactly one run_end, `interrupted`."""
    out = tmp_path / "run"
    monkeypatch.setenv("GPT2_INSTRUCT_TEST_STALL", "0:2:120")  # rank 0 sleeps before step 2
    proc = start([*TINY, "--max-steps", "4", "--eval-every", "0", "--max-new-tokens", "2", "--out", str(out)])
    try:
        wait_for(lambda: of_type(written(out), "train"), 240, "step 1")
        time.sleep(1)
        kill_group(proc, signal.SIGINT)
        time.sleep(1.5)  # past the window in which a repeated signal is a duplicate
        kill_group(proc, signal.SIGINT)
        wait_for(lambda: written(out)[-1]["type"] == "run_end", 10, "run_end")
    finally:
        kill_group(proc, signal.SIGKILL)
    proc.communicate()
    end = events(out)[-1]
    assert end["status"] == "interrupted" and end["final_val_loss"] is None, end
    assert end["error"].startswith("stopped by SIGINT twice at step 1: "), end["error"]
    assert [e["type"] for e in events(out)].count("run_end") == 1


def test_a_failure_before_the_engine_exists_still_ends_the_run(tmp_path, no_leftovers, monkeypatch):
    """The data file replaced while rank 0 builds its token cache (before any engine): the build
    fails, and the attempt's run_start gets exactly one run_end, `failed`, the error in one line."""
    monkeypatch.setenv("GPT2_INSTRUCT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GPT2_INSTRUCT_TEST_HOLD", "0:tokenize:5")
    data = tmp_path / "data.json"
    shutil.copy(DATA, data)
    out = tmp_path / "run"
    args = [a if a != str(DATA) else str(data) for a in RUN]
    proc = start([*args, "--out", str(out)])
    wait_for(lambda: heartbeat(out, 0).get("phase") == "tokenize", 240, "rank 0 building the cache")
    changed = tmp_path / "changed.json"
    changed.write_bytes(DATA.read_bytes().replace(b"friend", b"fiend", 1))
    changed.replace(data)  # a new file under the old name, as an editor or a download would
    code, log = wait(proc, timeout=120)
    assert code != 0
    assert [e["type"] for e in events(out)] == ["run_start", "run_end"]
    end = events(out)[-1]
    assert end["status"] == "failed" and end["final_val_loss"] is None and "\n" not in end["error"]
    assert "data.json: changed while it was being tokenized; start again" in end["error"], end["error"]
