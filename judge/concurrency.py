"""How many requests are in flight on one server: a fixed number, or found by an AIMD limiter (`auto`).

A judge server answers a few requests at a time (its parallel "slots", Ollama's
OLLAMA_NUM_PARALLEL) and queues the rest without limit, so sending more than it has slots
adds latency, not throughput; sending fewer leaves slots idle. `auto` keeps the number in
flight a little above the slot count, the way TCP congestion control finds a link's capacity
(additive increase, multiplicative decrease; RFC 5681 for slow start and the once-per-window
decrease):

- While no queue forms, each completed request that found the limit full raises the limit:
  by 1 (slow start: doubling per round trip) until the first sign of congestion, then by
  1/limit (about 1 per round trip).
- Congestion is requests waiting in the server's queue, on average (a moving average over
  the last few completions), for more than half their service time. Ollama reports each
  request's wait in its final chunk; for servers that do not, the wait is the latency above
  the lowest seen. By Little's law, n in flight at S slots makes requests wait (n - S)/S
  service times on average, however the requests bunch, so the limit backs off (x0.75) once
  n passes 1.5 S and settles between about 1.1 S and 1.5 S, keeping every slot busy.
- 503/429 and timeouts halve the limit, fixed or auto: an entry waiting to retry holds no
  place (judge/dispatch.py), so only a lower limit lowers the load. A fixed limit then climbs
  back by about 1 per round trip, never above the number given.
- Decreases happen at most once per round trip: a completion of a request sent before the
  last decrease says nothing about the new limit.
"""

from __future__ import annotations

from dataclasses import dataclass

AUTO_MAX_IN_FLIGHT = 256  # a bound on `auto`, far above any single server's slots
AUTO_INITIAL_LIMIT = 1.0
QUEUE_TOLERANCE = 0.5  # queue wait allowed, as a fraction of the service time
QUEUE_BACKOFF = 0.75
WAIT_SMOOTHING = 0.2  # weight of the newest completion in the moving average of the wait
OVERLOAD_BACKOFF = 0.5


@dataclass(frozen=True, slots=True)
class Ticket:
    epoch: int  # decreases made before this request was sent
    saturated: bool  # the request took the last free place under the limit


class Limiter:
    """Bounds one server's requests in flight. Auto (`limit` None) moves the bound with the
    server's queue and overload signals; a fixed one moves only below its number, on overload."""

    def __init__(self, limit: int | None):
        self.adaptive = limit is None
        self.cap = float(AUTO_MAX_IN_FLIGHT if limit is None else limit)
        self.limit = AUTO_INITIAL_LIMIT if limit is None else float(limit)
        self.in_flight = 0
        self._epoch = 0
        self._slow_start = True
        self._min_latency_s = float("inf")
        self._wait_ratio = 0.0  # moving average of queue wait / service time

    @property
    def room(self) -> int:
        """Requests that may be sent now."""
        return max(1, int(self.limit)) - self.in_flight

    def take(self) -> Ticket:
        self.in_flight += 1
        return Ticket(self._epoch, self.in_flight >= int(self.limit))

    def release(
        self,
        ticket: Ticket,
        latency_s: float | None = None,
        queue_wait_s: float | None = None,
        overload: bool = False,
    ) -> None:
        """A request is done: with its latency when it was answered, `overload` on 503/429/timeout."""
        self.in_flight -= 1
        if overload:
            self._decrease(ticket, OVERLOAD_BACKOFF)
        elif latency_s is not None:
            if self.adaptive and self._congested(latency_s, queue_wait_s):
                self._decrease(ticket, QUEUE_BACKOFF)
            elif ticket.saturated and self.limit < self.cap:  # the limit, not the work, bounded the requests
                step = 1.0 if self._slow_start else 1.0 / self.limit
                self.limit = min(self.cap, self.limit + step)

    def _congested(self, latency_s: float, queue_wait_s: float | None) -> bool:
        if queue_wait_s is None:
            self._min_latency_s = min(self._min_latency_s, latency_s)
            queue_wait_s = latency_s - self._min_latency_s
        ratio = queue_wait_s / max(latency_s - queue_wait_s, 1e-6)
        self._wait_ratio += WAIT_SMOOTHING * (ratio - self._wait_ratio)
        return self._wait_ratio > QUEUE_TOLERANCE

    def _decrease(self, ticket: Ticket, factor: float) -> None:
        if ticket.epoch != self._epoch:
            return
        self.limit = max(1.0, self.limit * factor)
        self._wait_ratio = 0.0  # measure the new limit afresh
        self._epoch += 1
        self._slow_start = False
