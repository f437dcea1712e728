"""Scoring against the fake Ollama server: every entry scored exactly once under each fault."""

import asyncio

import orjson
import pytest

from judge.clients import CheckError
from judge.scorer import score_file
from testkit.fake_ollama import BAD_REQUEST, NOT_A_SCORE
from tests.judge.helpers import expected, score_config, write_entries

FAULTS = ["503", "500", "drop", "error_line", "malformed", "non_integer", "final_text", "nonstream"]


def run(config) -> dict:
    return asyncio.run(score_file(config))


def assert_all_scored_once(server, entries, out_path, key="model_response"):
    scored = orjson.loads(out_path.read_bytes())
    assert [e[f"{key}_score"] for e in scored] == [expected(e, key) for e in entries]
    assert [{k: v for k, v in e.items() if k != f"{key}_score"} for e in scored] == entries
    assert len(server.completions) == len(entries)
    assert set(server.completions.values()) == {1}


@pytest.mark.parametrize("mode", FAULTS)
def test_every_entry_scored_once_under_fault(tmp_path, fake_ollama, mode):
    server = fake_ollama(slots=4, latency_s=0.005, mode=mode)
    entries = write_entries(tmp_path / "in.json", 40)
    summary = run(score_config(tmp_path, server.url))
    assert_all_scored_once(server, entries, tmp_path / "out.json")
    figures = summary["keys"]["model_response"]
    assert (figures["scored"], figures["failed"], figures["unparseable"]) == (40, 0, 0)
    recovered = mode not in ("final_text", "nonstream")
    assert summary["retries"] == (40 if recovered else 0)
    assert summary["requests"] == (80 if recovered else 40)


def test_slow_first_byte_times_out_and_retries(tmp_path, fake_ollama):
    server = fake_ollama(slots=4, latency_s=0.005, mode="slow_first_byte", first_byte_delay_s=0.4)
    entries = write_entries(tmp_path / "in.json", 8)
    summary = run(score_config(tmp_path, server.url, timeout_s=0.2))
    assert_all_scored_once(server, entries, tmp_path / "out.json")
    assert summary["retries"] == 8


def test_server_restart_costs_retries_not_entries(tmp_path, fake_ollama):
    server = fake_ollama(slots=4, latency_s=0.01, restart_after=30, restart_down_s=0.3)
    entries = write_entries(tmp_path / "in.json", 80)
    summary = run(score_config(tmp_path, server.url, retry_base_s=0.05, retry_cap_s=0.4))
    assert_all_scored_once(server, entries, tmp_path / "out.json")
    assert summary["retries"] > 0 and summary["keys"]["model_response"]["failed"] == 0


def test_unparseable_is_retried_once_then_recorded(tmp_path, fake_ollama):
    server = fake_ollama(slots=4, latency_s=0.005, mode="always_non_integer")
    write_entries(tmp_path / "in.json", 5)
    summary = run(score_config(tmp_path, server.url))
    figures = summary["keys"]["model_response"]
    assert (figures["scored"], figures["unparseable"], figures["mean"]) == (0, 5, None)
    assert figures["unparseable_indices"] == [0, 1, 2, 3, 4]
    assert set(server.requests.values()) == {2}
    scored = orjson.loads((tmp_path / "out.json").read_bytes())
    assert all(e["model_response_score"] is None and e["model_response_judge_reply"] == NOT_A_SCORE for e in scored)


def test_request_carries_the_chapter_options(tmp_path, fake_ollama):
    server = fake_ollama(slots=2, latency_s=0.001)
    write_entries(tmp_path / "in.json", 3)
    run(score_config(tmp_path, server.url, structured=True))
    for prompt, body in server.bodies.items():
        assert body["options"] == {"seed": 123, "temperature": 0, "num_ctx": 2048}
        assert body["keep_alive"] == "30m" and body["stream"] is True
        assert body["messages"] == [{"role": "user", "content": prompt}]
        assert body["format"]["properties"]["score"] == {"type": "integer", "minimum": 0, "maximum": 100}


def test_empty_and_identical_responses(tmp_path, fake_ollama):
    server = fake_ollama(slots=2, latency_s=0.001)
    entry = {"instruction": "Name a colour.", "input": "", "output": "Blue."}
    entries = [{**entry, "model_response": "Red."}, {**entry, "model_response": ""}, {**entry, "model_response": "Red."}]
    (tmp_path / "in.json").write_bytes(orjson.dumps(entries))
    summary = run(score_config(tmp_path, server.url))
    assert sum(server.requests.values()) == 1
    scores = [e["model_response_score"] for e in orjson.loads((tmp_path / "out.json").read_bytes())]
    assert scores == [expected(entries[0]), 0, expected(entries[0])]
    assert summary["keys"]["model_response"]["scored"] == 3


def test_several_keys_side_by_side(tmp_path, fake_ollama):
    server = fake_ollama(slots=4, latency_s=0.001)
    entries = write_entries(tmp_path / "in.json", 30, keys=("a", "b"))
    summary = run(score_config(tmp_path, server.url, keys=("a", "b")))
    scored = orjson.loads((tmp_path / "out.json").read_bytes())
    a = [expected(e, "a") for e in entries]
    b = [expected(e, "b") for e in entries]
    assert [e["a_score"] for e in scored] == a and [e["b_score"] for e in scored] == b
    (pair,) = summary["paired"]
    assert (pair["a"], pair["b"], pair["n"]) == ("a", "b", 30)
    assert pair["mean_diff"] == round(sum(x - y for x, y in zip(a, b)) / 30, 4)
    assert summary["keys"]["a"]["mean"] == round(sum(a) / 30, 4)


def test_bad_request_fails_fast_is_listed_and_retried_next_run(tmp_path, fake_ollama):
    """A 400 is not retried; the run finishes with the entry listed as failed, not journaled;
    the next run retries exactly the failed entries."""
    server = fake_ollama(slots=2, latency_s=0.001, mode="400")
    entries = write_entries(tmp_path / "in.json", 4)
    config = score_config(tmp_path, server.url)
    summary = run(config)
    figures = summary["keys"]["model_response"]
    assert (figures["failed"], figures["failed_indices"], summary["retries"]) == (4, [0, 1, 2, 3], 0)
    assert figures["mean"] is None
    scored = orjson.loads((tmp_path / "out.json").read_bytes())
    assert scored[0]["model_response_score"] is None
    assert scored[0]["model_response_judge_error"] == f"HTTP 400: {BAD_REQUEST}"
    assert not (tmp_path / "out.journal.jsonl").exists()
    summary = run(config)
    assert summary["keys"]["model_response"]["failed"] == 0 and summary["from_journal"] == 0
    assert_all_scored_once(server, entries, tmp_path / "out.json")
    assert set(server.requests.values()) == {2}
    summary = run(config)  # everything is in the journal now: nothing is sent
    assert summary["requests"] == 0 and summary["from_journal"] == 4
    assert_all_scored_once(server, entries, tmp_path / "out.json")


def test_missing_model_fails_at_once(tmp_path, fake_ollama):
    server = fake_ollama()
    write_entries(tmp_path / "in.json", 3)
    with pytest.raises(CheckError, match=r"model 'mistral' is not on the Ollama server .*run `ollama pull mistral`"):
        run(score_config(tmp_path, server.url, model="mistral"))
    assert sum(server.requests.values()) == 0
    assert not (tmp_path / "out.json").exists()


def test_openai_api_with_key(tmp_path, fake_ollama):
    server = fake_ollama(slots=4, latency_s=0.002, mode="500", api_key="sk-secret-123")
    entries = write_entries(tmp_path / "in.json", 20)
    summary = run(score_config(tmp_path, server.url + "/v1", api="openai", structured=True, api_key="sk-secret-123"))
    assert_all_scored_once(server, entries, tmp_path / "out.json")
    assert set(server.authorizations) == {"Bearer sk-secret-123"}
    body = next(iter(server.bodies.values()))
    assert (body["seed"], body["temperature"], body["stream"]) == (123, 0, False)
    assert "options" not in body and "num_ctx" not in body
    assert body["response_format"]["type"] == "json_schema"
    assert summary["judge"]["api"] == "openai" and summary["judge"]["digest"] is None
    for path in tmp_path.iterdir():
        assert b"sk-secret-123" not in path.read_bytes()


def test_openai_wrong_key_is_refused(tmp_path, fake_ollama):
    server = fake_ollama(api_key="right")
    write_entries(tmp_path / "in.json", 2)
    with pytest.raises(CheckError, match="refused the API key") as failure:
        run(score_config(tmp_path, server.url, api="openai", api_key="wrong"))
    assert "wrong" not in str(failure.value)
