"""`--concurrency auto` finds the server's parallel capacity: between S and 2S in flight."""

import asyncio

import pytest

from judge.concurrency import Limiter
from judge.scorer import score_file
from tests.judge.helpers import score_config, write_entries


@pytest.mark.slow  # timed against the fake server, about 20 s in all
@pytest.mark.parametrize("api", ["ollama", "openai"])
@pytest.mark.parametrize("slots, latency_s, count", [(4, 0.05, 300), (16, 0.1, 640)])
def test_auto_settles_between_s_and_2s(tmp_path, fake_ollama, api, slots, latency_s, count):
    """Ollama reports the queue wait; the OpenAI path has only latency to go by."""
    server = fake_ollama(slots=slots, latency_s=latency_s)
    write_entries(tmp_path / "in.json", count)
    asyncio.run(score_file(score_config(tmp_path, server.url, api=api, model="llama3")))
    start, end = server.in_flight_log[0][0], server.in_flight_log[-1][0]
    # The middle half of the run: after slow start, before the last requests drain.
    middle = server.mean_in_flight(start + (end - start) / 4, end - (end - start) / 4)
    assert slots <= middle <= 2 * slots, middle


def test_fixed_limit_ignores_queueing():
    limiter = Limiter(3)
    tickets = [limiter.take() for _ in range(3)]
    assert limiter.room == 0
    for ticket in tickets:
        limiter.release(ticket, latency_s=5.0, queue_wait_s=4.9)  # congestion changes nothing
    assert (limiter.limit, limiter.room) == (3.0, 3)


def test_overload_halves_once_per_round_trip():
    limiter = Limiter(None)
    limiter.limit = 16.0
    tickets = [limiter.take() for _ in range(16)]
    for ticket in tickets:  # all sent before the first 503 came back: one decrease
        limiter.release(ticket, overload=True)
    after_first = limiter.limit
    limiter.release(limiter.take(), overload=True)
    assert [after_first, limiter.limit] == [8.0, 4.0]


def test_fixed_limit_lowers_on_overload_and_climbs_back_to_its_number():
    """An entry waiting to retry holds no place, so a fixed limit must itself drop on 503s for
    the load to drop; it then climbs back, never past the number given."""
    limiter = Limiter(8)
    for ticket in [limiter.take() for _ in range(8)]:
        limiter.release(ticket, overload=True)
    assert limiter.limit == 4.0
    for _ in range(200):  # answered requests that filled the limit: about +1 per round trip
        tickets = [limiter.take() for _ in range(limiter.room)]
        for ticket in tickets:
            limiter.release(ticket, latency_s=0.2, queue_wait_s=0.0)
    assert limiter.limit == 8.0
