"""The command line: bad input files, SIGKILL and resume, the summary file."""

import base64
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from tests.judge.helpers import expected, write_entries

REPO = Path(__file__).resolve().parents[2]


def judge(*args: str, env: dict | None = None, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "judge", "score", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, **popen)


def finish(process: subprocess.Popen, timeout: float = 60) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        process.kill()
    return process.returncode, out, err


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not json at all", "in.json: line 1 is not valid JSON"),
        (b'[{"instruction": "a", "output": "b", "model_response": "c"},', "in.json: not valid JSON"),
        (b'[{"instruction": "a", "model_response": "c"}]', "in.json: entry 0: missing field 'output'"),
        (b'[{"instruction": "a", "output": "b", "model_response": "c"}, {"instruction": "a", "output": "b"}]',
         "in.json: entry 1: missing field 'model_response'"),
        (b'[{"instruction": "a", "output": 3, "model_response": "c"}]',
         "in.json: entry 0: field 'output' must be a string, got int"),
    ],
)
def test_bad_input_one_line_error_writes_nothing(tmp_path, fake_ollama, content, message):
    server = fake_ollama()
    (tmp_path / "in.json").write_bytes(content)
    code, out, err = finish(judge(str(tmp_path / "in.json"), "--url", server.url))
    assert code == 1
    assert err.strip().startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.json"]
    assert sum(server.requests.values()) == 0


def test_missing_api_key_variable_is_named_not_sent(tmp_path, fake_ollama):
    server = fake_ollama()
    write_entries(tmp_path / "in.json", 2)
    code, _, err = finish(judge(str(tmp_path / "in.json"), "--url", server.url, "--api", "openai",
                                "--api-key-env", "JUDGE_TEST_KEY_UNSET"))
    assert code == 1 and "environment variable JUDGE_TEST_KEY_UNSET is not set" in err


def test_sigkill_then_resume_sends_no_finished_entry_again(tmp_path, fake_ollama):
    server = fake_ollama(slots=4, latency_s=0.02)
    entries = write_entries(tmp_path / "in.json", 200)
    args = (str(tmp_path / "in.json"), "--url", server.url, "--concurrency", "4", "--out", str(tmp_path / "s.json"))
    journal = tmp_path / "s.journal.jsonl"

    first = judge(*args)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if journal.exists() and journal.read_bytes().count(b"\n") >= 100:
            break
        time.sleep(0.005)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    first.stdout.close(), first.stderr.close()
    finished = {orjson.loads(line)["key"] for line in journal.read_bytes().splitlines()}
    assert 100 <= len(finished) < 200 and not (tmp_path / "s.json").exists()
    sent_before = sum(server.requests.values())

    code, out, err = finish(judge(*args))
    assert code == 0, err
    # The second run asked for exactly the entries the journal did not hold...
    assert sum(server.requests.values()) - sent_before == 200 - len(finished)
    # ...so only requests in flight at the kill (at most 4) were ever sent twice.
    assert sum(1 for n in server.requests.values() if n > 1) <= 4
    assert max(server.requests.values()) <= 2
    scored = orjson.loads((tmp_path / "s.json").read_bytes())
    assert [e["model_response_score"] for e in scored] == [expected(e) for e in entries]
    summary = orjson.loads((tmp_path / "s.summary.json").read_bytes())
    assert summary["from_journal"] == len(finished) and summary["keys"]["model_response"]["scored"] == 200
    assert "wrote" in out and "model_response" in out


def test_summary_file_schema(tmp_path, fake_ollama):
    server = fake_ollama(slots=2, latency_s=0.001)
    entries = write_entries(tmp_path / "in.json", 12, keys=("model_response", "other"))
    code, out, err = finish(judge(str(tmp_path / "in.json"), "--url", server.url, "--key", "model_response",
                                  "--key", "other"))
    assert code == 0, err
    summary = orjson.loads((tmp_path / "in.scored.summary.json").read_bytes())
    assert (summary["v"], summary["type"]) == (1, "judge_summary")
    assert summary["judge"] == {"model": "llama3:latest", "digest": "fe938a131f40", "api": "ollama",
                                "url": server.url, "server_version": "0.12.3", "structured": False,
                                "options": {"seed": 123, "temperature": 0, "num_ctx": 2048},
                                "journal_key": "model digest"}
    assert summary["output"] == str(tmp_path / "in.scored.json")
    for key in ("model_response", "other"):
        figures = summary["keys"][key]
        scores = [expected(e, key) for e in entries]
        assert figures["total"] == figures["scored"] == 12
        assert figures["mean"] == round(sum(scores) / 12, 4)
        assert sum(figures["histogram"]["counts"]) == 12 and figures["ci95"][0] <= figures["mean"] <= figures["ci95"][1]
    assert summary["paired"][0]["n"] == 12
    assert summary["requests"] == 24 and summary["requests_per_s"] > 0


def test_summary_matches_its_documented_example(tmp_path, fake_ollama):
    """docs/judge.md is the dashboard's contract: its example summary has exactly the fields the
    judge writes, at every level."""
    doc = (REPO / "docs" / "judge.md").read_text()
    example = orjson.loads(re.search(r"## `<out>.summary.json`.*?```json\n(.*?)```", doc, re.S).group(1))
    server = fake_ollama(slots=2, latency_s=0.001)
    write_entries(tmp_path / "in.json", 4, keys=("model_response", "other_response"))
    code, _, err = finish(judge(str(tmp_path / "in.json"), "--url", server.url, "--key", "model_response",
                                "--key", "other_response"))
    assert code == 0, err
    summary = orjson.loads((tmp_path / "in.scored.summary.json").read_bytes())
    assert summary.keys() == example.keys()
    assert summary["judge"].keys() == example["judge"].keys()
    assert summary["keys"]["model_response"].keys() == example["keys"]["model_response"].keys()
    assert summary["servers"][0].keys() == example["servers"][0].keys()
    assert summary["paired"][0].keys() == example["paired"][0].keys()


def leaked(secret: str, tmp_path: Path, *texts: str) -> list[str]:
    """Where a secret appears: the texts given (stdout, stderr) and every file under tmp_path."""
    places = [f"text {i}" for i, text in enumerate(texts) if secret in text]
    return places + [str(p) for p in tmp_path.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_credentials_are_never_printed_or_written(tmp_path, fake_ollama):
    """A password in --url, the Basic-auth header built from it (echoed back by a proxy's error
    page) and an --api-key-env key appear in no output, file or message."""
    server = fake_ollama(slots=2, latency_s=0.001, mode="echo_auth")
    write_entries(tmp_path / "in.json", 3)
    url = server.url.replace("http://", "http://judge:s3cret-pw@")
    basic = base64.b64encode(b"judge:s3cret-pw").decode()
    code, out, err = finish(judge(str(tmp_path / "in.json"), "--url", url, "--retries", "0"))
    assert code == 3, err  # every entry met the error page once: failed, listed
    assert f"Basic {basic}" in server.authorizations  # the credentials were sent...
    assert leaked("s3cret-pw", tmp_path, out, err) == [] and leaked(basic, tmp_path, out, err) == []  # ...not shown
    summary = orjson.loads((tmp_path / "in.scored.summary.json").read_bytes())
    shown = server.url.replace("http://", "http://***@")
    assert summary["judge"]["url"] == shown and summary["servers"][0]["url"] == shown
    assert f"server {shown}:" in out
    scored = orjson.loads((tmp_path / "in.scored.json").read_bytes())
    assert "Authorization: Basic ***" in scored[0]["model_response_judge_error"]

    server.stop_thread()  # nobody listens there now: the error names the server, not the password
    code, out, err = finish(judge(str(tmp_path / "in.json"), "--url", url))
    assert code == 1 and f"cannot reach the judge server at {shown}/api/version" in err
    assert leaked("s3cret-pw", tmp_path, out, err) == []


def test_api_key_is_never_printed_or_written(tmp_path, fake_ollama):
    server = fake_ollama(slots=2, latency_s=0.001, mode="echo_auth", api_key="sk-live-123456")
    write_entries(tmp_path / "in.json", 3)
    code, out, err = finish(judge(str(tmp_path / "in.json"), "--url", server.url, "--api", "openai",
                                  "--api-key-env", "JUDGE_TEST_KEY", "--retries", "0",
                                  env={"JUDGE_TEST_KEY": "sk-live-123456"}))
    assert code == 3, err
    assert "Bearer sk-live-123456" in server.authorizations
    assert leaked("sk-live-123456", tmp_path, out, err) == []


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
def test_timeout_must_be_a_positive_number(tmp_path, value):
    """aiohttp reads a timeout of 0 as no timeout at all: a stuck server would hang the run."""
    write_entries(tmp_path / "in.json", 1)
    code, _, err = finish(judge(str(tmp_path / "in.json"), "--timeout", value))
    assert code == 2 and f"argument --timeout: expected a positive number of seconds, got '{value}'" in err


def test_several_servers_on_the_command_line(tmp_path, fake_ollama):
    servers = [fake_ollama(slots=2, latency_s=0.002), fake_ollama(slots=4, latency_s=0.002)]
    entries = write_entries(tmp_path / "in.json", 40)
    code, out, err = finish(judge(str(tmp_path / "in.json"), "--url", servers[0].url, "--url", servers[1].url,
                                  "--concurrency", "2", "--concurrency", "auto"))
    assert code == 0, err
    summary = orjson.loads((tmp_path / "in.scored.summary.json").read_bytes())
    assert summary["concurrency"] == [2, "auto"]
    assert [(s["url"], s["concurrency"]) for s in summary["servers"]] == [(servers[0].url, 2), (servers[1].url, "auto")]
    assert sum(s["requests"] for s in summary["servers"]) == 40
    scored = orjson.loads((tmp_path / "in.scored.json").read_bytes())
    assert [e["model_response_score"] for e in scored] == [expected(e) for e in entries]
    code, _, err = finish(judge(str(tmp_path / "in.json"), "--url", servers[0].url, "--url", servers[1].url,
                                "--concurrency", "1", "--concurrency", "2", "--concurrency", "3"))
    assert code == 1 and err.strip() == (
        "error: --concurrency given 3 times for 2 --url: give it once, or once per --url")


def test_check_names_the_model_and_its_short_digest(fake_ollama):
    """`python -m judge check`: one line, the digest as `ollama list` and the summary show it."""
    server = fake_ollama(slots=1, latency_s=0.0)
    done = subprocess.run([sys.executable, "-m", "judge", "check", "--url", server.url], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"ok: llama3:latest (digest {server.digest[:12]}) at {server.url}\n"
