"""Sending the prompts: every free place on every server filled, entries waiting to retry
holding none.

More entries are in progress than requests are in flight: an entry whose request failed waits
out its backoff to the side, and the place it held goes to the next entry at once, so no slot
idles while work remains (overload still lowers the load: the limiter's limit drops,
judge/concurrency.py). An entry goes to whichever server has the most room; a retry, a re-ask
and an entry whose server went down go ahead of new entries. Entries waiting to retry are
bounded (`WAITING_PER_PLACE` per place in flight), so while a server is down new entries wait
instead of failing one after another. An entry is in at most one request at a time, so no
prompt is answered twice.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterator

import aiohttp

from judge.concurrency import Ticket
from judge.journal import Result
from judge.parse import parse_score
from judge.replies import RequestError
from judge.servers import Server, Servers

WAITING_PER_PLACE = 2
WAITING_MIN = 8


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 8  # per prompt, after the first attempt
    base_s: float = 0.5  # first backoff; doubles per retry, up to cap_s
    cap_s: float = 30.0


@dataclass(slots=True)
class Job:
    """One prompt in progress."""

    key: str
    prompt: str
    failures: int = 0
    first_reply: str | None = None  # an unparseable first reply: asked once more
    truncated: bool | None = None  # True once any reply said so; False once one said not


class Dispatcher:
    """Sends prompts to the servers, retrying failures, until each prompt has a final result."""

    def __init__(self, servers: Servers, session: aiohttp.ClientSession, structured: bool, policy: RetryPolicy,
                 finish: Callable[[str, Result], None]):
        self.servers = servers
        self.session = session
        self.structured = structured
        self.policy = policy
        self.finish = finish  # called once per prompt with its final result
        self.requests = 0
        self.retries = 0
        self._new: Iterator[tuple[str, str]] = iter(())  # the prompts not yet sent
        self._exhausted = False
        self._ready: deque[Job] = deque()  # retries and re-asks, sent before new entries
        self._waiting: dict[int, asyncio.TimerHandle] = {}  # entries in backoff, by id(job)
        self._tasks: set[asyncio.Task] = set()
        self._changed = asyncio.Event()
        self._error: BaseException | None = None
        self._jitter = random.Random()

    async def run(self, todo: Iterator[tuple[str, str]]) -> None:
        """Send every (key, prompt) of `todo` until each has a final result."""
        self._new = iter(todo)
        probe = asyncio.ensure_future(self.servers.probe(self.session, self._changed.set))
        try:
            self._fill()
            while self._tasks or self._waiting or self._ready or not self._exhausted:
                await self._changed.wait()
                self._changed.clear()
                if self._error is not None:
                    raise self._error
                self._fill()
        finally:
            probe.cancel()
            for handle in self._waiting.values():
                handle.cancel()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(probe, *self._tasks, return_exceptions=True)

    def _fill(self) -> None:
        """Start a request on every free place, while there is work."""
        while (server := self.servers.free()) is not None and (job := self._next_job()) is not None:
            task = asyncio.ensure_future(self._work(server, self._take(server), job))
            self._tasks.add(task)
            task.add_done_callback(self._work_done)

    def _next_job(self) -> Job | None:
        """A retry or re-ask first; else a new entry, unless too many wait to retry."""
        if self._ready:
            return self._ready.popleft()
        if self._exhausted or self._too_many_waiting():
            return None
        item = next(self._new, None)
        self._exhausted = item is None
        return None if item is None else Job(*item)

    def _take(self, server: Server) -> Ticket:
        """A place on the server for one request."""
        self.requests += 1
        server.requests += 1
        return server.limiter.take()

    def _too_many_waiting(self) -> bool:
        waiting = len(self._waiting)
        return waiting >= WAITING_MIN and waiting >= WAITING_PER_PLACE * self.servers.limit()

    async def _work(self, server: Server, ticket: Ticket, job: Job) -> None:
        """Requests to one server, one after the other, while it has room and there is work: a
        worker that lasts as long as it is needed (no task per request); `_fill` starts more
        when a server has room to spare."""
        while True:
            await self._attempt(server, ticket, job)
            if server.room <= 0 or (job := self._next_job()) is None:
                break
            ticket = self._take(server)
            self._fill()  # room to spare (a higher limit, a retry back): more workers
        self._fill()

    def _work_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and self._error is None:
            self._error = task.exception()  # a bug, not a server's fault: ends the run
        self._changed.set()

    async def _attempt(self, server: Server, ticket: Ticket, job: Job) -> None:
        try:
            reply = await server.client.chat(self.session, job.prompt)
        except RequestError as e:
            server.limiter.release(ticket, overload=e.overload)
            self.servers.failed(server, e)
            self._failed(server, job, e)
            return
        except BaseException:
            server.limiter.release(ticket)
            raise
        server.limiter.release(ticket, reply.latency_s, reply.queue_wait_s)
        server.succeeded()
        if reply.truncated is not None:
            job.truncated = bool(job.truncated) or reply.truncated
        score = parse_score(reply.content, self.structured)
        if score is not None or job.first_reply is not None:
            self.finish(job.key, Result(score, None if score is not None else reply.content, truncated=job.truncated))
            return
        job.first_reply = reply.content
        self.retries += 1
        self._ready.appendleft(job)

    def _failed(self, server: Server, job: Job, error: RequestError) -> None:
        job.failures += 1
        if not error.retryable or job.failures > self.policy.retries:
            self.finish(job.key, Result(None, error=str(error)))
            return
        self.retries += 1
        if not server.up:  # the others take its entries at once
            self._ready.appendleft(job)
            return
        self._waiting[id(job)] = asyncio.get_running_loop().call_later(self._backoff_s(job.failures), self._back, job)

    def _back(self, job: Job) -> None:
        del self._waiting[id(job)]
        self._ready.appendleft(job)
        self._fill()

    def _backoff_s(self, failures: int) -> float:
        """Exponential backoff with "equal jitter" (half fixed, half random), so entries that
        failed together (a server restart) do not come back together."""
        ceiling = min(self.policy.cap_s, self.policy.base_s * 2 ** (failures - 1))
        return ceiling * self._jitter.uniform(0.5, 1.0)
