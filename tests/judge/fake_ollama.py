"""A fake Ollama server (and its OpenAI-compatible `/v1`) for the judge's tests and benchmark.

It speaks the protocol of Ollama's docs/api.md: `/api/chat` streams `application/x-ndjson`
chunks (`{"model", "created_at", "message": {"role": "assistant", "content"}, "done": false}`)
and a final `"done": true` chunk with `done_reason` and durations in nanoseconds, zero fields
left out (`load_duration` only on the first request, as after a model load); `"stream": false`
gets the final object alone. `/api/version` and `/api/tags` answer as the docs' fixtures
(`llama3:latest` with its digest). Errors are `{"error": "..."}`: 404 for a missing model,
503 "server busy" and 500 in fault modes, and an error line inside a 200 stream.

`slots` requests are served at a time; the rest wait for a slot (Ollama queues requests to a
loaded model without limit), and the time waited is what the final chunk's durations leave
unaccounted for, as in Ollama. Latency is simulated with asyncio.sleep: no CPU is burned.

Fault modes hit the first request of every prompt, so each entry meets the fault once:
"400", "503", "500", "drop" (connection cut mid-stream), "error_line" (an error line inside a 200
stream), "malformed" (a broken JSON line), "slow_first_byte" (no headers for
`first_byte_delay_s`), "non_integer" (a reply that is not a score). "always_non_integer" never
gives a score. Protocol variants: "final_text" (the final chunk carries the last text),
"nonstream" (one JSON object even when a stream was asked for). `restart_after=N` takes the
server down for `restart_down_s` after N completed replies, dropping the requests in flight.

The score of a prompt is `expected_score(prompt)`, so tests know every right answer.

Run alone for the benchmark: `python -m tests.judge.fake_ollama --slots 8 --latency 0.2`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import orjson
from aiohttp import web

VERSION = "0.12.3"
# docs/api.md, "List Local Models".
TAGS_MODEL = {
    "name": "llama3:latest",
    "model": "llama3:latest",
    "modified_at": "2023-12-07T09:32:18.757212583-08:00",
    "size": 3825819519,
    "digest": "fe938a131f40e6f6d40083c9f0f430a515233eb2edaa6d72eb85c50d64f2300e",
    "details": {
        "format": "gguf",
        "family": "llama",
        "families": None,
        "parameter_size": "7B",
        "quantization_level": "Q4_0",
    },
}
BUSY = "server busy, please try again.  maximum pending requests exceeded"
RUNNER_DIED = "llama runner process has terminated: exit status 2"
BAD_REQUEST = "json: cannot unmarshal string into Go struct field ChatRequest.messages of type []api.Message"
MID_STREAM_ERROR = "an error was encountered while running the model: unexpected EOF"
NOT_A_SCORE = "This response deserves a good score, about eighty."
MODES = (
    None, "400", "503", "500", "drop", "error_line", "malformed", "slow_first_byte", "non_integer",
    "always_non_integer", "final_text", "nonstream",
)


def expected_score(prompt: str) -> int:
    return int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % 101


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass
class FakeOllama:
    slots: int = 4
    latency_s: float = 0.01  # service time of one request once it has a slot
    mode: str | None = None
    first_byte_delay_s: float = 1.0
    restart_after: int | None = None
    restart_down_s: float = 0.3
    api_key: str | None = None  # when set, /v1 requires "Authorization: Bearer <key>"
    port: int = 0
    requests: Counter = field(default_factory=Counter)  # chat requests per prompt
    completions: Counter = field(default_factory=Counter)  # replies with a score, fully sent
    bodies: dict = field(default_factory=dict)  # the last request body per prompt
    authorizations: list = field(default_factory=list)  # Authorization headers seen on /v1
    log_in_flight: bool = True  # keep in_flight_log (a long benchmark does not)
    in_flight_log: list = field(default_factory=list)  # (monotonic time, requests in the server)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}")
        self._in_flight = 0
        self._completed = 0
        self._loaded = False
        self._runner: web.AppRunner | None = None
        self._restart_task: asyncio.Task | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ---- serving ----

    async def start(self) -> None:
        self._semaphore = asyncio.Semaphore(self.slots)  # FIFO: waiters are served in order
        app = web.Application()
        app.router.add_get("/api/version", self._version)
        app.router.add_get("/api/tags", self._tags)
        app.router.add_post("/api/chat", self._chat)
        app.router.add_get("/v1/models", self._v1_models)
        app.router.add_post("/v1/chat/completions", self._v1_chat)
        self._runner = web.AppRunner(app, shutdown_timeout=0.05, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._restart_task is not None:
            await asyncio.gather(self._restart_task, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _restart(self) -> None:
        await self._runner.cleanup()  # closes the listener and the connections in flight
        await asyncio.sleep(self.restart_down_s)
        await self.start()

    def start_in_thread(self) -> FakeOllama:
        """Serve from a thread with its own event loop (for tests whose client blocks)."""
        started = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self.start())
            started.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self.stop())
            self._loop.close()

        self._thread = threading.Thread(target=serve, name="fake-ollama", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("fake Ollama server did not start")
        return self

    def stop_thread(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def mean_in_flight(self, start: float, end: float) -> float:
        """Time-weighted mean of the requests in the server between two monotonic times."""
        area, level, t_prev = 0.0, 0, start
        for t, n in self.in_flight_log:
            if t > end:
                break
            if t > start:
                area += level * (t - t_prev)
                t_prev = t
            level = n
        area += level * (end - t_prev)
        return area / (end - start)

    def _track(self, delta: int) -> None:
        self._in_flight += delta
        if self.log_in_flight:
            self.in_flight_log.append((time.monotonic(), self._in_flight))

    # ---- endpoints ----

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": VERSION})

    async def _tags(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [TAGS_MODEL]})

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        self.authorizations.append(request.headers.get("Authorization"))
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response(
                {"error": {"message": "Invalid API key", "type": "invalid_request_error"}}, status=401
            )
        return None

    async def _v1_models(self, request: web.Request) -> web.Response:
        if refused := self._unauthorized(request):
            return refused
        return web.json_response(
            {"object": "list", "data": [{"id": "llama3", "object": "model", "created": 1701900738, "owned_by": "library"}]}
        )

    def _reply(self, prompt: str, attempt: int, structured: bool) -> tuple[str, bool]:
        """The judge's answer and whether it holds a score."""
        if self.mode == "always_non_integer" or (self.mode == "non_integer" and attempt == 0):
            return NOT_A_SCORE, False
        score = expected_score(prompt)
        return (orjson.dumps({"score": score}).decode() if structured else str(score)), True

    async def _admit(self, body: dict) -> tuple[str, int, str | None] | web.Response:
        """Count the request; answer the request-level faults. Returns prompt, attempt, fault."""
        prompt = body["messages"][-1]["content"]
        attempt = self.requests[prompt]
        self.requests[prompt] += 1
        self.bodies[prompt] = body
        fault = self.mode if attempt == 0 else None
        if fault == "400":
            return web.json_response({"error": BAD_REQUEST}, status=400)
        if fault == "503":
            return web.json_response({"error": BUSY}, status=503)
        if fault == "500":
            return web.json_response({"error": RUNNER_DIED}, status=500)
        if fault == "slow_first_byte":
            await asyncio.sleep(self.first_byte_delay_s)
        return prompt, attempt, fault

    async def _serve_slot(self) -> tuple[float, float]:
        """Wait for a slot and hold it for the service time; returns (queue wait, service) s."""
        arrived = time.monotonic()
        async with self._semaphore:
            queued = time.monotonic() - arrived
            await asyncio.sleep(self.latency_s)
        return queued, self.latency_s

    def _finished(self, prompt: str, has_score: bool) -> None:
        if has_score:
            self.completions[prompt] += 1
        self._completed += 1
        if self.restart_after is not None and self._completed == self.restart_after:
            self._restart_task = asyncio.ensure_future(self._restart())

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        if body["model"] not in ("llama3", "llama3:latest"):
            return web.json_response({"error": f"model '{body['model']}' not found"}, status=404)
        admitted = await self._admit(body)
        if isinstance(admitted, web.Response):
            return admitted
        prompt, attempt, fault = admitted
        self._track(+1)
        try:
            return await self._chat_reply(request, body, prompt, attempt, fault)
        finally:
            self._track(-1)

    async def _chat_reply(self, request, body, prompt, attempt, fault) -> web.StreamResponse:
        started = time.monotonic()
        content, has_score = self._reply(prompt, attempt, isinstance(body.get("format"), dict))
        queued, service = await self._serve_slot()
        final = {
            "model": body["model"],
            "created_at": _now_iso(),
            "message": {"role": "assistant", "content": ""},
            "done_reason": "stop",
            "done": True,
            "total_duration": int((time.monotonic() - started) * 1e9),
            "prompt_eval_count": 26,
            "prompt_eval_duration": int(service / 2 * 1e9),
            "eval_count": len(content),
            "eval_duration": int(service / 2 * 1e9),
        }
        if not self._loaded:  # the first request loads the model
            self._loaded = True
            final["load_duration"] = 1334875
            final["total_duration"] += 1334875
        if body.get("stream") is False or self.mode == "nonstream":
            final["message"]["content"] = content
            self._finished(prompt, has_score)
            return web.json_response(final)

        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        pieces = [content[i : i + 2] for i in range(0, len(content), 2)]
        if self.mode == "final_text":
            final["message"]["content"] = pieces.pop()
        for number, piece in enumerate(pieces):
            chunk = {"model": body["model"], "created_at": _now_iso(),
                     "message": {"role": "assistant", "content": piece}, "done": False}
            await response.write(orjson.dumps(chunk) + b"\n")
            if number == 0 and fault == "drop":
                request.transport.abort()  # the connection dies mid-reply
                return response
            if number == 0 and fault == "error_line":
                await response.write(orjson.dumps({"error": MID_STREAM_ERROR}) + b"\n")
                await response.write_eof()
                return response
            if number == 0 and fault == "malformed":
                await response.write(b'{"model":"llama3","created_at":"2024-\n')
                await response.write_eof()
                return response
        await response.write(orjson.dumps(final) + b"\n")
        self._finished(prompt, has_score)
        await response.write_eof()
        return response

    async def _v1_chat(self, request: web.Request) -> web.Response:
        if refused := self._unauthorized(request):
            return refused
        body = orjson.loads(await request.read())
        if body["model"] != "llama3":
            return web.json_response(
                {"error": {"message": f"model '{body['model']}' not found", "type": "api_error"}}, status=404
            )
        admitted = await self._admit(body)
        if isinstance(admitted, web.Response):
            return admitted
        prompt, attempt, fault = admitted
        self._track(+1)
        try:
            structured = (body.get("response_format") or {}).get("type") in ("json_schema", "json_object")
            content, has_score = self._reply(prompt, attempt, structured)
            await self._serve_slot()
            if fault == "drop":
                request.transport.abort()
                return web.Response()
            self._finished(prompt, has_score)
            return web.json_response({
                "id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()),
                "model": "llama3", "system_fingerprint": "fp_ollama",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 26, "completion_tokens": len(content), "total_tokens": 26 + len(content)},
            })
        finally:
            self._track(-1)


async def _serve_until_cancelled(server: FakeOllama, port_file: Path | None) -> None:
    await server.start()
    if port_file is not None:
        port_file.write_text(str(server.port))
    print(f"fake Ollama on {server.url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="fake Ollama server for the judge's tests and benchmark")
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    args = parser.parse_args()
    server = FakeOllama(slots=args.slots, latency_s=args.latency, port=args.port, log_in_flight=False)
    try:
        asyncio.run(_serve_until_cancelled(server, args.port_file))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
