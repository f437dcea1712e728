"""Fixtures of the judge's tests: the fake Ollama server, served from a thread on 127.0.0.1."""

from __future__ import annotations

import pytest

from testkit.fake_ollama import FakeOllama


@pytest.fixture
def fake_ollama():
    """Start fake servers: `fake_ollama(slots=4, latency_s=0.01, mode=...)`; all stop at teardown."""
    servers = []

    def start(**settings) -> FakeOllama:
        server = FakeOllama(**settings).start_in_thread()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop_thread()
