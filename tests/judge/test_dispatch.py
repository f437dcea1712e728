"""Dispatch: no slot idles while entries wait to retry, overload still lowers the load, and
several servers share the work (a dead one's entries taken over, a revived one used again)."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

import orjson
import pytest

from judge.clients import CheckError
from judge.scorer import score_file
from testkit.fake_ollama import TAGS_MODEL
from tests.judge.helpers import expected, score_config, write_entries


def run(config) -> dict:
    return asyncio.run(score_file(config))


def assert_scored_exactly_once(servers, entries, out_path):
    scored = orjson.loads(out_path.read_bytes())
    assert [e["model_response_score"] for e in scored] == [expected(e) for e in entries]
    completions = sum((server.completions for server in servers), Counter())
    assert len(completions) == len(entries) and set(completions.values()) == {1}


def middle(server, first: float = 0.1, last: float = 0.7) -> tuple[float, float]:
    """A window of the run's slot time, after the start and before the last entries drain."""
    start, end = server.slot_log[0][0], max(b for _, b in server.slot_log)
    return start + first * (end - start), start + last * (end - start)


@pytest.mark.parametrize("concurrency", [4, None], ids=["fixed", "auto"])
def test_no_slot_idles_while_entries_wait_to_retry(tmp_path, fake_ollama, concurrency):
    """A fifth of the requests fail (dropped, an error line, a broken line: each after holding a
    slot; or an instant 500). Entries in backoff hold no place, so with a fixed concurrency equal
    to the slots every slot stays busy (waiting entries used to hold one of the N places)."""
    server = fake_ollama(slots=4, latency_s=0.05, fault_rate=0.2, seed=3)
    entries = write_entries(tmp_path / "in.json", 160)
    run(score_config(tmp_path, server.url, concurrency=(concurrency,), retry_base_s=0.1, retry_cap_s=0.4))
    assert_scored_exactly_once([server], entries, tmp_path / "out.json")
    busy = server.busy_fraction(*middle(server))
    assert busy >= 0.88, busy


def test_overload_still_lowers_the_load(tmp_path, fake_ollama):
    """A server with 2 slots that answers 503 once 2 requests queue (OLLAMA_MAX_QUEUE): with a
    fixed concurrency of 16 the 503s lower the limit, so most requests are not turned away."""
    server = fake_ollama(slots=2, latency_s=0.02, max_queue=2)
    entries = write_entries(tmp_path / "in.json", 120)
    summary = run(score_config(tmp_path, server.url, concurrency=(16,), retry_base_s=0.05, retry_cap_s=0.2))
    assert_scored_exactly_once([server], entries, tmp_path / "out.json")
    busy_replies = summary["servers"][0]["failures"]
    assert busy_replies <= summary["requests"] / 3, (busy_replies, summary["requests"])
    assert server.mean_in_flight(*middle(server)) <= 8


def test_several_servers_share_the_work_by_capacity(tmp_path, fake_ollama):
    servers = [fake_ollama(slots=slots, latency_s=0.05) for slots in (2, 4, 8)]
    entries = write_entries(tmp_path / "in.json", 280)
    summary = run(score_config(tmp_path, [s.url for s in servers]))
    assert_scored_exactly_once(servers, entries, tmp_path / "out.json")
    listed = summary["servers"]
    assert [s["url"] for s in listed] == [s.url for s in servers]
    requests = [s["requests"] for s in listed]
    assert sum(requests) == summary["requests"] == 280
    assert requests[0] < requests[1] < requests[2], requests  # each server's own auto limit
    assert all(s["failures"] == 0 and s["concurrency"] == "auto" and s["requests_per_s"] > 0 for s in listed)
    assert summary["judge"]["url"] == servers[0].url


def test_a_killed_server_has_its_entries_taken_over(tmp_path, fake_ollama):
    servers = [fake_ollama(slots=slots, latency_s=0.05) for slots in (2, 4, 8)]
    entries = write_entries(tmp_path / "in.json", 300)
    killer = threading.Timer(0.5, servers[2].kill)
    killer.start()
    try:
        summary = run(score_config(tmp_path, [s.url for s in servers]))
    finally:
        killer.cancel()
    assert_scored_exactly_once(servers, entries, tmp_path / "out.json")
    assert summary["keys"]["model_response"]["failed"] == 0
    dead = summary["servers"][2]
    assert dead["times_down"] == 1 and dead["failures"] >= 1
    assert 0 < sum(servers[2].completions.values()) < 300


def test_a_server_that_came_back_is_used_again(tmp_path, fake_ollama):
    """The first server goes away for 0.3 s after 20 replies; the other takes its entries; a
    probe (every 0.1 s here, 30 s by default) finds it back and it gets entries again."""
    flaky = fake_ollama(slots=4, latency_s=0.02, restart_after=20, restart_down_s=0.3)
    steady = fake_ollama(slots=2, latency_s=0.02)
    entries = write_entries(tmp_path / "in.json", 300)
    summary = run(score_config(tmp_path, [flaky.url, steady.url], probe_interval_s=0.1))
    assert_scored_exactly_once([flaky, steady], entries, tmp_path / "out.json")
    assert summary["servers"][0]["times_down"] == 1
    assert sum(flaky.completions.values()) > 40  # well past the 20 before it went away


def test_servers_must_serve_the_same_model(tmp_path, fake_ollama):
    first = fake_ollama()
    other = fake_ollama(digest="365c0bd3c000a25d28ddbf732fe1c6add414de7275464c4e4d1c3b5fcb5d8ad1")
    write_entries(tmp_path / "in.json", 3)
    with pytest.raises(CheckError) as refused:
        run(score_config(tmp_path, [first.url, other.url]))
    message = str(refused.value)
    assert message == (f"the servers serve different models: {first.url} has llama3:latest "
                       f"(digest {TAGS_MODEL['digest'][:12]}); {other.url} has llama3:latest (digest 365c0bd3c000)")
    assert sum(first.requests.values()) + sum(other.requests.values()) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.json"]
