"""`python -m judge follow RUN_DIR` against the fake Ollama: judged evaluations scored as they
appear, an exit when the run ends (run_end, or stalled after a kill) and every file is scored."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import orjson

from testkit.paths import REPO, RESPONSES_DATA


def append_event(run_dir: Path, **event) -> None:
    with open(run_dir / "metrics.jsonl", "ab") as f:
        f.write(orjson.dumps({"v": 1, "time": time.time(), **event}) + b"\n")


def write_eval(run_dir: Path, step: int) -> Path:
    entries = orjson.loads(RESPONSES_DATA.read_bytes())[step : step + 4]
    path = run_dir / "evals" / f"step-{step}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".tmp")
    tmp.write_bytes(orjson.dumps(entries))
    tmp.rename(path)  # as the trainer writes them: whole or not at all
    return path


def follow(run_dir: Path, url: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "judge", "follow", str(run_dir), "--url", url, "--interval", "0.2",
                             "--quiet", *extra], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def summaries(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "evals").glob("*.scored.summary.json"))


def test_scores_files_as_they_appear_and_stops_when_the_run_ends(tmp_path, fake_ollama):
    server = fake_ollama(slots=4, latency_s=0.005)
    run = tmp_path / "run"
    run.mkdir()
    append_event(run, type="run_start", resumed_from_step=0)
    write_eval(run, 1)
    proc = follow(run, server.url)
    try:
        deadline = time.monotonic() + 30
        while summaries(run) != ["step-1.scored.summary.json"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert summaries(run) == ["step-1.scored.summary.json"]
        assert proc.poll() is None  # the run goes on: so does the follower
        write_eval(run, 11)
        write_eval(run, 21)
        append_event(run, type="run_end", status="completed")
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert summaries(run) == ["step-1.scored.summary.json", "step-11.scored.summary.json", "step-21.scored.summary.json"]
    summary = orjson.loads((run / "evals" / "step-11.scored.summary.json").read_bytes())
    assert summary["keys"]["model_response"]["scored"] == 4
    assert "step-21.json: mean " in out


def test_a_killed_run_ends_the_follower_once_it_stalls(tmp_path, fake_ollama):
    server = fake_ollama(slots=4, latency_s=0.005)
    run = tmp_path / "run"
    run.mkdir()
    append_event(run, type="run_start", resumed_from_step=0)  # and no run_end ever: killed
    write_eval(run, 1)
    started = time.monotonic()
    proc = follow(run, server.url, "--stall-after", "2")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert summaries(run) == ["step-1.scored.summary.json"] and time.monotonic() - started < 30


def test_what_cannot_be_scored_when_the_run_has_ended_is_named(tmp_path, fake_ollama):
    run = tmp_path / "run"
    run.mkdir()
    append_event(run, type="run_start", resumed_from_step=0)
    write_eval(run, 1)
    append_event(run, type="run_end", status="completed")
    proc = follow(run, "http://127.0.0.1:9")  # nobody listens there
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3
    assert err.splitlines()[-1] == ("error: the run has ended; not scored: step-1.json "
                                    "(re-run the same command to retry)")
    assert not summaries(run)
