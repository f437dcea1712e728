"""Run directories that cannot collide and a lock that one launcher holds (trainer/lifecycle/rundir.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import orjson
import pytest

from testkit.paths import REPO
from trainer.lifecycle import rundir
from trainer.lifecycle.resume import newest_unfinished
from trainer.lifecycle.rundir import LOCK_STALE_S, RunLock, create_run_dir


def test_two_runs_started_in_the_same_second_get_two_directories(tmp_path, monkeypatch):
    monkeypatch.setattr(rundir.time, "strftime", lambda fmt: "20261130-120000")
    first = create_run_dir(None, "tiny", tmp_path / "runs")
    second = create_run_dir(None, "tiny", tmp_path / "runs")
    assert (first.name, second.name) == ("20261130-120000-tiny", "20261130-120000-tiny-2")
    assert first.is_dir() and second.is_dir()


def test_out_must_be_new_empty_or_a_run(tmp_path):
    assert create_run_dir(str(tmp_path / "new"), "tiny").is_dir()
    (tmp_path / "empty").mkdir()
    assert create_run_dir(str(tmp_path / "empty"), "tiny") == tmp_path / "empty"
    (tmp_path / "checkout").mkdir()
    (tmp_path / "checkout" / "ds_config.json").write_text("{}")
    with pytest.raises(ValueError, match="is not empty and holds no run of this project"):
        create_run_dir(str(tmp_path / "checkout"), "tiny")
    assert [p.name for p in (tmp_path / "checkout").iterdir()] == ["ds_config.json"]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match="already holds a run: pass --resume"):
        create_run_dir(str(tmp_path / "run"), "tiny")
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        create_run_dir(str(tmp_path / "a-file"), "tiny")


def test_a_live_lock_is_respected_and_released(tmp_path):
    lock = RunLock.take(tmp_path)
    holder = orjson.loads((tmp_path / "run.lock").read_bytes())
    assert holder["pid"] == os.getpid() and holder["refreshed"] >= holder["started"]
    with pytest.raises(ValueError, match=f"is being run by pid {os.getpid()} on "):
        RunLock.take(tmp_path)
    lock.release()
    assert not (tmp_path / "run.lock").exists()


def test_stale_locks_are_taken_over_with_a_message(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / "run.lock").write_bytes(orjson.dumps(
        {"host": os.uname().nodename, "pid": gone.pid, "started": 1.0, "refreshed": time.time()}))
    said = []
    lock = RunLock.take(tmp_path, say=said.append)
    assert said == [f"taking over the stale lock of {tmp_path / 'run.lock'} (pid {gone.pid} is gone)"]
    # Another host: judged by its refresh time only, with room for a shared filesystem's lag.
    (tmp_path / "run.lock").write_bytes(orjson.dumps(
        {"host": "elsewhere", "pid": 1, "started": 1.0, "refreshed": time.time() - LOCK_STALE_S / 2}))
    with pytest.raises(ValueError, match="is being run by pid 1 on elsewhere"):
        RunLock.take(tmp_path)
    (tmp_path / "run.lock").write_bytes(orjson.dumps(
        {"host": "elsewhere", "pid": 1, "started": 1.0, "refreshed": time.time() - LOCK_STALE_S - 1}))
    RunLock.take(tmp_path, say=said.append)
    assert said[-1].endswith(f"(not refreshed for more than {LOCK_STALE_S:.0f} s)")
    lock.release()  # no longer this process's lock: left to its new holder
    assert (tmp_path / "run.lock").exists()


TAKER = """
import sys, time
from pathlib import Path
from trainer.lifecycle.rundir import RunLock
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
try:
    RunLock.take(Path(sys.argv[1]), say=lambda text: None)
    print("took", flush=True)
except ValueError as e:
    print("refused", e, flush=True)
time.sleep(1)  # holding it while the others try
"""


@pytest.mark.parametrize("before", ["none", "stale", "unreadable"])
def test_of_launchers_taking_the_lock_at_once_one_wins(tmp_path, before):
    """Four processes take run.lock at the same instant, with no lock there, a stale one or an
    unreadable one: exactly one holds the run, the others are refused naming it."""
    if before == "stale":
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        (tmp_path / "run.lock").write_bytes(orjson.dumps(
            {"host": os.uname().nodename, "pid": gone.pid, "started": 1.0, "refreshed": time.time()}))
    elif before == "unreadable":
        (tmp_path / "run.lock").write_bytes(b"{half a lo")
    at = time.time() + 2  # after every interpreter has started
    takers = [subprocess.Popen([sys.executable, "-c", TAKER, str(tmp_path), str(at)], stdout=subprocess.PIPE,
                               text=True, cwd=REPO) for _ in range(4)]
    said = [taker.communicate(timeout=30)[0].strip() for taker in takers]
    assert sorted(line.split()[0] for line in said) == ["refused", "refused", "refused", "took"], said
    winner = takers[[line.split()[0] for line in said].index("took")].pid
    assert all(f"is being run by pid {winner} on " in line for line in said if line.startswith("refused")), said
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.lock"]  # nothing left aside


def test_resume_without_out_skips_a_run_that_is_running(tmp_path):
    runs = tmp_path / "runs"
    for name in ("older", "running"):
        (runs / name).mkdir(parents=True)
        (runs / name / "config.json").write_text("{}")
        time.sleep(0.01)
    lock = RunLock.take(runs / "running")
    assert newest_unfinished(runs) == runs / "older"
    lock.release()
    assert newest_unfinished(runs) == runs / "running"
