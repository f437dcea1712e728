"""Input checked before anything is written, under the real launcher with 2 CPU ranks: a misspelled
hostfile, an older run's config.json, and a run directory another launcher holds."""

from __future__ import annotations

import signal
import time

import orjson
import pytest

from tests.trainer.launcher import TINY, events, kill_group, start, train, wait, wait_for
from trainer.reporting.metrics import read_events

pytestmark = pytest.mark.slow


def errors(log: str) -> list[str]:
    return [line[line.index("error:"):] for line in log.splitlines() if "error:" in line]


def test_a_misspelled_hostfile_is_refused_when_ranks_are_expected(tmp_path, monkeypatch):
    """DeepSpeed falls back to this node alone when the hostfile is missing; a batch script that
    says how many ranks it expects is told at once, with the hosts found."""
    monkeypatch.setenv("GPT2_INSTRUCT_EXPECT_RANKS", "4")
    out = tmp_path / "run"
    code, log = train([*TINY, "--out", str(out)], launcher_args=["--hostfile", str(tmp_path / "hots")])
    assert code != 0 and "Traceback" not in log
    assert len(set(errors(log))) == 1, log[-3000:]
    assert "--expect-ranks 4: the launcher started 2 ranks on " in errors(log)[0]
    assert not out.exists()


def test_an_older_config_json_stops_every_rank_with_one_line(tmp_path):
    out = tmp_path / "run"
    (out / "ranks").mkdir(parents=True)
    (out / "config.json").write_bytes(orjson.dumps({"config": {"model": "tiny"}}))  # no provenance, no v
    (out / "metrics.jsonl").write_bytes(b"")
    started = time.monotonic()
    code, log = train([*TINY, "--out", str(out), "--resume"], timeout=120)
    assert code != 0 and "Traceback" not in log
    assert errors(log) == [f"error: {out / 'config.json'}: not a run config.json of this version of gpt2-instruct; "
                           "resume it with the version that started it, or start a new run"], log[-3000:]
    assert time.monotonic() - started < 60  # no rank waits for --dist-timeout or longer
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "metrics.jsonl", "ranks"]


def test_a_running_run_is_held_by_its_launcher(tmp_path, no_leftovers, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setenv("GPT2_INSTRUCT_TEST_HOLD", "0:export:120")
    first = start([*TINY, "--max-steps", "1", "--eval-every", "0", "--max-new-tokens", "2", "--out", str(out)])
    try:
        wait_for(lambda: any(e["type"] == "checkpoint" for e in read_events(out / "metrics.jsonl")), 240, "a step")
        monkeypatch.delenv("GPT2_INSTRUCT_TEST_HOLD")
        lock = orjson.loads((out / "run.lock").read_bytes())
        code, log = train([*TINY, "--out", str(out), "--resume"])
        assert code != 0 and len(set(errors(log))) == 1, log[-3000:]
        assert f"is being run by pid {lock['pid']} on {lock['host']}" in errors(log)[0]
        assert [e["type"] for e in events(out)].count("run_start") == 1  # the second launcher wrote nothing
    finally:
        kill_group(first, signal.SIGTERM)
        wait(first, timeout=60)
    assert not (out / "run.lock").exists()  # released when the run ended
