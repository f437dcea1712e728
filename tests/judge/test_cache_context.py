"""An honest cache and context: the journal key holds the model's digest (or says it cannot),
prompts cut to fit the judge's context are flagged, and re-scoring a scored file leaves no
stale fields."""

from __future__ import annotations

import asyncio
import hashlib

import orjson
import pytest

from judge.cli import main
from judge.clients import OLLAMA_OPTIONS, TRUNCATION_MARGIN, ServerConfig, ServerInfo
from judge.journal import RequestKey
from judge.prompt import CHAPTER_TEMPLATE, render
from judge.scorer import score_file
from testkit.fake_ollama import prompt_tokens
from tests.judge.helpers import expected, score_config, write_entries

NEW_DIGEST = "365c0bd3c000a25d28ddbf732fe1c6add414de7275464c4e4d1c3b5fcb5d8ad1"


def run(config) -> dict:
    return asyncio.run(score_file(config))


def test_a_new_model_under_the_same_name_is_scored_again(tmp_path, fake_ollama):
    """`ollama pull llama3` brings a new digest: the journal's scores are for the old model."""
    server = fake_ollama(slots=2, latency_s=0.001)
    write_entries(tmp_path / "in.json", 5)
    config = score_config(tmp_path, server.url)
    assert run(config)["requests"] == 5
    again = run(config)
    assert (again["requests"], again["from_journal"]) == (0, 5)
    server.digest = NEW_DIGEST
    pulled = run(config)
    assert (pulled["requests"], pulled["from_journal"], pulled["judge"]["digest"]) == (5, 0, NEW_DIGEST[:12])
    assert pulled["judge"]["journal_key"] == "model digest"


def test_without_a_digest_the_key_holds_the_model_id_and_the_summary_says_so(tmp_path, fake_ollama, capsys):
    server = fake_ollama(slots=2, latency_s=0.001)
    write_entries(tmp_path / "in.json", 4)
    args = ["score", str(tmp_path / "in.json"), "--url", server.url, "--api", "openai", "--quiet"]
    assert main(args) == 0
    capsys.readouterr()
    server.digest = NEW_DIGEST  # invisible to /v1: the journal cannot tell
    assert main(args) == 0
    out = capsys.readouterr().out
    summary = orjson.loads((tmp_path / "in.scored.summary.json").read_bytes())
    assert (summary["judge"]["digest"], summary["judge"]["journal_key"], summary["from_journal"]) == (None, "model id", 4)
    assert ("the server reports no model digest: the journal key holds the model id, so the 4 scores from the "
            "journal may come from another version of it") in out


def response_for_tokens(entry: dict, tokens: int) -> str:
    """A response that makes the chapter's prompt `tokens` long for the fake server's count."""
    base = len(render(CHAPTER_TEMPLATE, entry, "").encode())
    response = "w" * ((tokens - 1) * 4 - base)
    assert prompt_tokens(render(CHAPTER_TEMPLATE, entry, response)) == tokens
    return response


def test_prompts_cut_to_fit_the_context_are_flagged(tmp_path, fake_ollama):
    num_ctx = OLLAMA_OPTIONS["num_ctx"]
    entry = {"instruction": "Summarise the text.", "input": "", "output": "A summary."}
    lengths = [num_ctx + 400, num_ctx - TRUNCATION_MARGIN + 3, num_ctx - TRUNCATION_MARGIN - 20, 100]
    entries = [{**entry, "model_response": response_for_tokens(entry, n)} for n in lengths]
    (tmp_path / "in.json").write_bytes(orjson.dumps(entries))
    server = fake_ollama(slots=2, latency_s=0.001)
    config = score_config(tmp_path, server.url)
    for _ in range(2):  # scored, then from the journal: the flag is kept
        summary = run(config)
        figures = summary["keys"]["model_response"]
        assert (figures["truncated"], figures["truncated_indices"], figures["truncation_unknown"]) == (2, [0, 1], 0)
        assert figures["scored"] == 4  # scored, and flagged
        scored = orjson.loads((tmp_path / "out.json").read_bytes())
        assert [e.get("model_response_truncated") for e in scored] == [True, True, None, None]
        assert [e["model_response_score"] for e in scored] == [expected(e) for e in entries]
    assert summary["from_journal"] == 4


@pytest.mark.parametrize("api, mode", [("ollama", "no_prompt_count"), ("openai", None)])
def test_truncation_is_unknown_without_a_prompt_token_count(tmp_path, fake_ollama, api, mode):
    server = fake_ollama(slots=2, latency_s=0.001, mode=mode)
    entries = write_entries(tmp_path / "in.json", 3)
    entries[1]["model_response"] = ""  # scored 0 without a request: not judged, not unknown
    (tmp_path / "in.json").write_bytes(orjson.dumps(entries))
    figures = run(score_config(tmp_path, server.url, api=api))["keys"]["model_response"]
    assert (figures["truncated"], figures["truncation_unknown"], figures["truncated_indices"]) == ("unknown", 2, [])


def test_scoring_a_scored_file_again_replaces_the_judge_fields(tmp_path, fake_ollama):
    server = fake_ollama(slots=2, latency_s=0.001)
    entries = write_entries(tmp_path / "in.json", 3)
    stale = [
        {**entries[0], "model_response_score": None, "model_response_judge_error": "HTTP 500: old"},
        {**entries[1], "model_response_score": None, "model_response_judge_reply": "eighty"},
        {**entries[2], "model_response_score": 3, "model_response_truncated": True, "note": "kept"},
    ]
    (tmp_path / "in.json").write_bytes(orjson.dumps(stale))
    run(score_config(tmp_path, server.url))
    scored = orjson.loads((tmp_path / "out.json").read_bytes())
    assert scored == [{**e, "model_response_score": expected(e)} for e in entries[:2]] + [
        {**entries[2], "note": "kept", "model_response_score": expected(entries[2])}]


@pytest.mark.parametrize("digest", [NEW_DIGEST, None])
def test_request_key_is_the_documented_hash(digest):
    """docs/judge.md: sha256 of {"prompt", "model", "api", "options", "structured"} (orjson,
    sorted keys), `model` being {"digest": ...} or, without a digest, {"id": ...}."""
    server = ServerConfig(url="http://h:11434", api="ollama", model="llama3", structured=True)
    prompt = 'Score "this" \u00e9\n{response}'
    identity = {"prompt": prompt, "model": {"digest": digest} if digest else {"id": "llama3"}, "api": "ollama",
                "options": server.options, "structured": True}
    documented = hashlib.sha256(orjson.dumps(identity, option=orjson.OPT_SORT_KEYS)).hexdigest()
    assert RequestKey(server, ServerInfo("llama3:latest", digest, None))(prompt) == documented
