"""Real HTTP servers on 127.0.0.1: a file server for the download and weights tests, and a
webhook that keeps what a run posts (--notify-env).

The file server serves bytes by path with Range support (206, Content-Range, 416), and can stand in for the
Hugging Face hub: a `resolve` path answers with a redirect carrying `X-Linked-Etag`, as the hub
does. It can also be made slow or made to drop the connection part-way through a body.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest

from tests.trainer.launcher import rank_processes


class FileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.redirects: dict[str, tuple[str, dict[str, str]]] = {}  # path -> (location, headers)
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.seconds_per_chunk = 0.0  # slow the body down, 64 KiB at a time
        self.close_after: int | None = None  # drop the connection after this many body bytes

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def gets(self, path: str) -> list[str | None]:
        """The Range headers of the GET requests for path, in order."""
        return [r for method, p, r in self.requests if method == "GET" and p == path]


class _Handler(BaseHTTPRequestHandler):
    timeout = 10  # a stuck client cannot hold a server thread for long

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self._answer(send_body=False)

    def do_GET(self):
        self._answer(send_body=True)

    def _answer(self, send_body: bool):
        server: FileServer = self.server
        server.requests.append((self.command, self.path, self.headers.get("Range")))
        if self.path in server.redirects:
            location, headers = server.redirects[self.path]
            self.send_response(302)
            self.send_header("Location", location)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = server.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        if match := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or ""):
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not send_body:
            return
        if server.close_after is not None:
            body = body[: server.close_after]
            self.close_connection = True
        for offset in range(0, len(body), 1 << 16):
            time.sleep(server.seconds_per_chunk)
            self.wfile.write(body[offset : offset + (1 << 16)])


@pytest.fixture
def file_server():
    server = FileServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def closed_port_url() -> str:
    """A loopback URL where nothing listens: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def no_leftovers(tmp_path):
    yield
    leftovers = rank_processes(tmp_path)
    for p in leftovers:
        p.kill()
    assert not leftovers, f"processes left behind: {[p.pid for p in leftovers]}"


class Webhook(ThreadingHTTPServer):
    """A webhook on 127.0.0.1 that keeps the JSON bodies posted to it."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Receiver)
        self.messages: list[dict] = []
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _Receiver(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.messages.append(orjson.loads(body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def webhook():
    server = Webhook()
    yield server
    server.close()
