"""Several judge servers used as one: each with its own client, limiter and counts, all checked
to serve the same model; a server that fails is set aside and probed again.

A server that cannot be reached, or that fails `FAILURES_IN_A_ROW` requests in a row, is marked
down while another server is up: its entries go to the others, and every `probe_interval_s`
it gets the start's check again (so one that came back with another model stays down). The
last server up is never marked down: its failures are retried per entry, as with one server.
"""

from __future__ import annotations

import asyncio
from typing import Callable

import aiohttp

from judge.clients import CheckError, ServerConfig, ServerInfo, make_client
from judge.concurrency import Limiter
from judge.replies import RequestError

PROBE_INTERVAL_S = 30.0
FAILURES_IN_A_ROW = 10  # at a 20% fault rate, ten in a row happen once in ten million requests


def _identity(info: ServerInfo) -> str:
    """What must agree between servers: the model's digest, or without one the model's name."""
    return f"digest {info.short_digest}" if info.digest else f"no digest, model {info.model}"


class Server:
    def __init__(self, config: ServerConfig, concurrency: int | None):
        self.config = config
        self.concurrency = concurrency  # None: auto
        self.client = make_client(config)
        self.limiter = Limiter(concurrency)
        self.up = True
        self.requests = 0
        self.failures = 0  # requests that got no usable reply
        self.times_down = 0
        self._failures_in_a_row = 0

    @property
    def room(self) -> int:
        return self.limiter.room if self.up else 0

    def succeeded(self) -> None:
        self._failures_in_a_row = 0

    def failed(self, error: RequestError, others_up: bool) -> None:
        self.failures += 1
        self._failures_in_a_row += 1
        if self.up and others_up and (error.unreachable or self._failures_in_a_row >= FAILURES_IN_A_ROW):
            self.up = False
            self.times_down += 1

    def came_back(self) -> None:
        self.up = True
        self._failures_in_a_row = 0

    def summary(self, wall_s: float) -> dict:
        return {
            "url": self.config.shown_url,
            "concurrency": "auto" if self.concurrency is None else self.concurrency,
            "requests": self.requests,
            "failures": self.failures,
            "requests_per_s": round(self.requests / wall_s, 3) if wall_s > 0 else 0.0,
            "times_down": self.times_down,
        }


class Servers:
    def __init__(self, configs: tuple[ServerConfig, ...], concurrency: tuple[int | None, ...],
                 probe_interval_s: float = PROBE_INTERVAL_S):
        per_server = concurrency * len(configs) if len(concurrency) == 1 else concurrency
        self.all = [Server(config, n) for config, n in zip(configs, per_server, strict=True)]
        self.probe_interval_s = probe_interval_s
        self.info: ServerInfo | None = None

    async def check(self, session: aiohttp.ClientSession) -> ServerInfo:
        """Check every server; all must serve the same model. Returns the first one's info."""
        infos = await asyncio.gather(*(server.client.check(session) for server in self.all))
        if len({_identity(info) for info in infos}) > 1:
            listed = "; ".join(f"{s.config.shown_url} has {i.model} ({_identity(i)})" for s, i in zip(self.all, infos))
            raise CheckError(f"the servers serve different models: {listed}")
        self.info = infos[0]
        return self.info

    def free(self) -> Server | None:
        """The server with the most room now, if any has room."""
        best, most = None, 0
        for server in self.all:
            if (room := server.room) > most:
                best, most = server, room
        return best

    def in_flight(self) -> int:
        return sum(server.limiter.in_flight for server in self.all)

    def limit(self) -> float:
        return sum(server.limiter.limit for server in self.all if server.up)

    def failed(self, server: Server, error: RequestError) -> None:
        server.failed(error, others_up=any(other.up for other in self.all if other is not server))

    async def probe(self, session: aiohttp.ClientSession, changed: Callable[[], None]) -> None:
        """Forever: check the servers that are down; one that passes is up again."""
        while True:
            await asyncio.sleep(self.probe_interval_s)
            for server in [s for s in self.all if not s.up]:
                try:
                    info = await server.client.check(session)
                except CheckError:
                    continue
                if _identity(info) == _identity(self.info):
                    server.came_back()
                    changed()
