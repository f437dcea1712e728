"""The judge's fuzz suite: every kind of bad reply, one at a time and mixed, and malformed input
files. Seeded, so every run meets the same faults; bounded in time (short timeouts/backoffs).

Against the fake server (testkit/fake_ollama.py), which speaks Ollama's protocol and
answers each fault the way a broken server, proxy or network would.
"""

from __future__ import annotations

import asyncio
import random
import time

import orjson
import pytest

from judge.cli import main
from judge.scorer import score_file
from testkit.fake_ollama import REQUEST_FAULTS, REPLY_FAULTS, FakeOllama
from tests.judge.helpers import expected, score_config, write_entries

# Every fault a retry gets past, per API (the OpenAI reply has no `done` or durations).
RETRIED = [f for f in REQUEST_FAULTS + REPLY_FAULTS if f not in ("400", "non_integer")]
OPENAI_RETRIED = [f for f in RETRIED if f not in ("done_not_bool", "duration_not_number")]
CASES = [("ollama", f) for f in RETRIED] + [("openai", f) for f in OPENAI_RETRIED]
TIMEOUT_S = 0.5  # bounds "trickle" and "slow_first_byte"


def timeout_for(mode: str) -> float:
    """Short only where the fault needs it: a loaded machine may keep a sound reply past it."""
    return TIMEOUT_S if mode in ("trickle", "slow_first_byte") else 5.0


def run(config) -> dict:
    return asyncio.run(score_file(config))


def scores_of(path, key="model_response") -> list:
    return [e[f"{key}_score"] for e in orjson.loads(path.read_bytes())]


@pytest.mark.parametrize("api, mode", CASES)
def test_each_fault_is_retried_and_every_entry_scored_once(tmp_path, fake_ollama, api, mode):
    server = fake_ollama(slots=4, latency_s=0.005, mode=mode, first_byte_delay_s=2 * TIMEOUT_S,
                         long_line_bytes=2**16)
    entries = write_entries(tmp_path / "in.json", 8)
    summary = run(score_config(tmp_path, server.url, api=api, timeout_s=timeout_for(mode), concurrency=(8,)))
    assert scores_of(tmp_path / "out.json") == [expected(e) for e in entries]
    assert set(server.completions.values()) == {1} and len(server.completions) == 8
    assert (summary["retries"], summary["requests"]) == (8, 16)


# The message each fault leaves when it is not retried: one line, the server's words kept.
MESSAGES = {
    "html_502": "HTTP 502: 502 Bad Gateway",
    "text_500": "HTTP 500: Internal Server Error The server encountered an unexpected condition that prevented "
                "it from fulfilling the request.",
    "html_200": "unexpected content type text/html: Sign in - Corporate Web Proxy",
    "list_chunk": "malformed reply: a chunk is an array",
    "content_not_string": "malformed reply: 'message.content' is a number",
    "message_not_object": "malformed reply: 'message' is a string",
    "done_not_bool": "malformed reply: 'done' is a string",
    "duration_not_number": "malformed reply: 'total_duration' is a string",
    "truncated_json": "malformed reply: a chunk is not JSON: ",
    "malformed": "malformed reply: a chunk is not JSON: ",
    "error_line": "server error: an error was encountered while running the model: unexpected EOF",
    "trickle": f"no complete reply within {TIMEOUT_S:g} s",
    "long_garbage": "malformed reply: a chunk is not JSON: 'xxxxxxxx",
}


@pytest.mark.parametrize("mode", sorted(MESSAGES))
def test_fault_message_is_one_line(tmp_path, fake_ollama, mode):
    server = fake_ollama(slots=2, latency_s=0.001, mode=mode, long_line_bytes=2**16)
    write_entries(tmp_path / "in.json", 2)
    started = time.monotonic()
    summary = run(score_config(tmp_path, server.url, timeout_s=timeout_for(mode), retries=0))
    assert time.monotonic() - started < TIMEOUT_S + 2.0  # a trickling server is cut off by --timeout
    assert summary["keys"]["model_response"]["failed"] == 2
    for entry in orjson.loads((tmp_path / "out.json").read_bytes()):
        error = entry["model_response_judge_error"]
        assert error.startswith(MESSAGES[mode]) and "\n" not in error and len(error) <= 250, error


@pytest.mark.parametrize("api", ["ollama", "openai"])
@pytest.mark.parametrize("size", [2**20, 10 * 2**20], ids=["1MiB", "10MiB"])
def test_lines_of_any_length(tmp_path, fake_ollama, api, size):
    """A valid reply line of 1 or 10 MiB is read whole (a score in white space); a line of that
    size that is not JSON is a malformed reply, retried."""
    for mode in ("long_line", "long_garbage"):
        server = fake_ollama(slots=2, latency_s=0.001, mode=mode, long_line_bytes=size)
        entries = write_entries(tmp_path / "in.json", 3)
        summary = run(score_config(tmp_path, server.url, api=api, out_path=tmp_path / f"{mode}.json"))
        assert scores_of(tmp_path / f"{mode}.json") == [expected(e) for e in entries]
        assert summary["retries"] == (0 if mode == "long_line" else 3)
        assert (tmp_path / f"{mode}.journal.jsonl").stat().st_size < 1000  # scores, not the padding


def test_mixed_faults_seeded(tmp_path, fake_ollama):
    """A third of all requests (retries too) meet a fault drawn from every retryable kind."""
    server = fake_ollama(slots=4, latency_s=0.005, fault_rate=0.3, seed=7, long_line_bytes=2**16,
                         faults=tuple(f for f in RETRIED if f != "slow_first_byte"), trickle_interval_s=0.05)
    entries = write_entries(tmp_path / "in.json", 60)
    summary = run(score_config(tmp_path, server.url, timeout_s=0.3))
    assert scores_of(tmp_path / "out.json") == [expected(e) for e in entries]
    assert set(server.completions.values()) == {1} and len(server.completions) == 60
    assert summary["retries"] == sum(server.requests.values()) - 60 > 10
    journal = [orjson.loads(line) for line in (tmp_path / "out.journal.jsonl").read_bytes().splitlines()]
    assert len(journal) == 60 and {r["score"] for r in journal} <= set(range(101))  # whole, one line each


# ---- malformed input files ----

def _valid(entry) -> bool:
    return (isinstance(entry, dict)
            and all(isinstance(entry.get(f), str) for f in ("instruction", "output", "model_response"))
            and (entry.get("input") is None or isinstance(entry["input"], str)))


def reference_entries(raw: bytes) -> list | None:
    """What the file should give: its entries, or None when the judge must refuse it."""
    try:
        if raw.lstrip()[:1] == b"[":
            entries = orjson.loads(raw)
        else:
            entries = [orjson.loads(line) for line in raw.splitlines() if line.strip()]
    except orjson.JSONDecodeError:
        return None
    return entries if isinstance(entries, list) and entries and all(map(_valid, entries)) else None


def mutate(rng: random.Random, entries: list[dict], jsonl: bool) -> bytes:
    entries = [dict(e) for e in entries]
    victim = rng.randrange(len(entries))
    kind = rng.choice(["truncate", "byte", "drop_field", "retype", "not_object", "bad_utf8", "blank", "none"])
    if kind == "drop_field":
        entries[victim].pop(rng.choice(["instruction", "output", "model_response", "input"]))
    elif kind == "retype":
        entries[victim][rng.choice(["instruction", "output", "model_response", "input"])] = rng.choice(
            [None, 3, 2.5, True, [], {"a": "b"}, ""])
    elif kind == "not_object":
        entries.insert(victim, rng.choice([[], "entry", 7, None]))
    raw = b"\n".join(map(orjson.dumps, entries)) + b"\n" if jsonl else orjson.dumps(entries)
    if kind == "truncate":
        raw = raw[: rng.randrange(len(raw))]
    elif kind == "byte":
        at = rng.randrange(len(raw))
        raw = raw[:at] + bytes([rng.choice(b'{}[],:"\\\n x\x00')]) + raw[at + 1:]
    elif kind == "bad_utf8":
        at = raw.index(b"Task")
        raw = raw[:at] + b"\xff\xfe" + raw[at:]
    elif kind == "blank":
        raw = rng.choice([b"", b"  \n\n ", b"[]", b"{}"])
    return raw


@pytest.mark.parametrize("jsonl", [False, True], ids=["json", "jsonl"])
def test_malformed_input_files(tmp_path, jsonl, capsys):
    """Seeded mutations of a good file: each is scored in full, or refused with a one-line error
    naming the file, exit status 1 and nothing written."""
    server = FakeOllama(slots=4, latency_s=0.0).start_in_thread()
    try:
        rng = random.Random(1234)
        good = write_entries(tmp_path / "good.json", 4)
        refused = 0
        for case in range(40):
            folder = tmp_path / f"case{case}"
            folder.mkdir()
            path = folder / ("in.jsonl" if jsonl else "in.json")
            raw = mutate(rng, good, jsonl)
            path.write_bytes(raw)
            want = reference_entries(raw)
            code = main(["score", str(path), "--url", server.url, "--quiet", "--retries", "0"])
            out, err = capsys.readouterr()
            if want is None:
                refused += 1
                assert code == 1, (raw, out)
                assert err.startswith(f"error: {path}: ") and err.count("\n") == 1, (raw, err)
                assert [p.name for p in folder.iterdir()] == [path.name]
            else:
                assert code == 0, (raw, err)
                assert scores_of(folder / "in.scored.json") == [expected(e) for e in want]
        assert 15 <= refused <= 35  # the mutations hit both outcomes
    finally:
        server.stop_thread()
