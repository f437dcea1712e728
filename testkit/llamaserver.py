"""llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`) for the tests: on
127.0.0.1, on a free port, up within a bounded time, and terminated on every path."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

START_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def llama_server(model: Path, log: Path, *args: str) -> Iterator[str]:
    """The server's base URL while the block runs, serving `model` with the server's flags `args`;
    its output goes to `log`. A server that exits, or is not up after START_TIMEOUT_S, raises."""
    port = free_port()
    with open(log, "wb") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
             "--port", str(port), *args],
            stdout=log_file, stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {server.returncode}: {log.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(url + "/v1/models", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"llama_cpp.server not up after {START_TIMEOUT_S} s") from None
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
