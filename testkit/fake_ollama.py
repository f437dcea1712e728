"""A fake Ollama server (and its OpenAI-compatible `/v1`) for the judge's tests and benchmark.

It speaks the protocol of Ollama's docs/api.md: `/api/chat` streams `application/x-ndjson`
chunks (`{"model", "created_at", "message": {"role": "assistant", "content"}, "done": false}`)
and a final `"done": true` chunk with `done_reason`, durations in nanoseconds and token counts,
zero fields left out (`load_duration` only on the first request, as after a model load);
`"stream": false` gets the final object alone (`application/json`). `/api/version` and
`/api/tags` answer as the docs' examples (`llama3:latest` with its digest). Errors are
`{"error": "..."}`: 404 for a missing model, 503 "server busy" (also when more than
`max_queue` requests wait, as OLLAMA_MAX_QUEUE), 500, and an error line inside a 200 stream.

`slots` requests are served at a time; the rest wait for a slot (Ollama queues requests to a
loaded model), and the time waited is what the final chunk's durations leave unaccounted for,
as in Ollama. Latency is simulated with asyncio.sleep: no CPU is burned. A prompt counts about
one token per 4 bytes; one longer than the request's `num_ctx` is cut to fit without an error
and reports `prompt_eval_count` = `num_ctx`, as Ollama does.

Faults. `mode` hits the first request of every prompt, so each entry meets the fault once:
request-level "400", "503", "500", "slow_first_byte" (no headers for `first_byte_delay_s`),
"html_502" (a proxy's HTML page), "text_500" (plain text over several lines), "html_200" (a
200 that is a proxy's sign-in page), "echo_auth" (a 500 whose page echoes the Authorization
header and the request line); after the slot's service time: "drop" (connection cut
mid-stream), "error_line" (an error line inside a 200 stream), "malformed" (a broken JSON
line), "truncated_json" (the final chunk cut off), "list_chunk" (a chunk that is a JSON
array), "content_not_string", "message_not_object", "done_not_bool", "duration_not_number",
"long_garbage" (a line of `long_line_bytes` that is not JSON), "trickle" (a byte every
`trickle_interval_s`, never finishing), "non_integer" (a reply that is not a score). Not
faults: "long_line" (a valid chunk of `long_line_bytes`), "final_text" (the final chunk carries
the last text), "nonstream" (one JSON object even when a stream was asked for),
"no_prompt_count" (no `prompt_eval_count`, as when Ollama reuses a cached prompt),
"always_non_integer" (never a score). `fault_rate` > 0 instead draws, for each request, one of
`faults` with that probability, from a hash of (seed, prompt, attempt): the same run gets the
same faults. `restart_after=N` takes the server down for `restart_down_s` after N completed
replies; `kill()` takes it down for good.

The score of a prompt is `expected_score(prompt)`, so tests know every right answer.

Run alone for the benchmark: `python -m testkit.fake_ollama --slots 8 --latency 0.2`.
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
DEFAULT_NUM_CTX = 2048
BUSY = "server busy, please try again.  maximum pending requests exceeded"
RUNNER_DIED = "llama runner process has terminated: exit status 2"
BAD_REQUEST = "json: cannot unmarshal string into Go struct field ChatRequest.messages of type []api.Message"
MID_STREAM_ERROR = "an error was encountered while running the model: unexpected EOF"
NOT_A_SCORE = "This response deserves a good score, about eighty."
# nginx's page for a dead upstream, as a reverse proxy in front of Ollama sends it.
HTML_502 = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx/1.24.0</center>\r\n</body>\r\n</html>\r\n"
)
HTML_SIGN_IN = (
    "<!DOCTYPE html>\n<html>\n<head>\n<title>Sign in - Corporate Web Proxy</title>\n</head>\n"
    "<body>\n<form method=\"post\"><input name=\"user\"><input name=\"password\" type=\"password\"></form>\n"
    "</body>\n</html>\n"
)
TEXT_500 = "Internal Server Error\n\nThe server encountered an unexpected condition\nthat prevented it from fulfilling the request.\n"
REQUEST_FAULTS = ("400", "503", "500", "slow_first_byte", "html_502", "text_500", "html_200", "echo_auth")
REPLY_FAULTS = (
    "drop", "error_line", "malformed", "truncated_json", "list_chunk", "content_not_string",
    "message_not_object", "done_not_bool", "duration_not_number", "long_garbage", "trickle", "non_integer",
)
VARIANTS = ("long_line", "final_text", "nonstream", "no_prompt_count", "always_non_integer")
MODES = (None, *REQUEST_FAULTS, *REPLY_FAULTS, *VARIANTS)
# The mix of `fault_rate`: faults that cost the server a slot, and instant 500s.
SLOT_FAULTS = ("drop", "error_line", "malformed", "500")


def expected_score(prompt: str) -> int:
    return int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % 101


def prompt_tokens(prompt: str) -> int:
    """About one token per 4 bytes, as Llama 3's tokenizer on English text."""
    return len(prompt.encode()) // 4 + 1


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass
class FakeOllama:
    slots: int = 4
    latency_s: float = 0.01  # service time of one request once it has a slot
    mode: str | None = None
    fault_rate: float = 0.0
    faults: tuple[str, ...] = SLOT_FAULTS
    seed: int = 0
    first_byte_delay_s: float = 1.0
    trickle_interval_s: float = 0.2
    long_line_bytes: int = 2**20
    max_queue: int | None = None  # requests waiting for a slot beyond this get a 503
    digest: str = TAGS_MODEL["digest"]
    restart_after: int | None = None
    restart_down_s: float = 0.3
    api_key: str | None = None  # when set, /v1 requires "Authorization: Bearer <key>"
    port: int = 0
    record: bool = True  # keep request bodies and the in-flight and slot logs (a long benchmark does not)
    requests: Counter = field(default_factory=Counter)  # chat requests per prompt
    completions: Counter = field(default_factory=Counter)  # replies with a score, fully sent
    bodies: dict = field(default_factory=dict)  # the last request body per prompt
    authorizations: list = field(default_factory=list)  # Authorization headers seen
    in_flight_log: list = field(default_factory=list)  # (monotonic time, requests in the server)
    slot_log: list = field(default_factory=list)  # (start, end) of each request's time in a slot
    slot_seconds: float = 0.0  # slot time used, all requests

    def __post_init__(self):
        unknown = {self.mode, *(self.faults if self.fault_rate else ())} - set(MODES)
        if unknown:
            raise ValueError(f"unknown mode {unknown}")
        self._in_flight = 0
        self._queued = 0
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
        app = web.Application(client_max_size=2**30)
        app.router.add_get("/api/version", self._version)
        app.router.add_get("/api/tags", self._tags)
        app.router.add_post("/api/chat", self._chat)
        app.router.add_get("/v1/models", self._v1_models)
        app.router.add_post("/v1/chat/completions", self._v1_chat)
        app.router.add_get("/fake/stats", self._stats)
        self._runner = web.AppRunner(app, shutdown_timeout=0.05, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._restart_task is not None:
            await asyncio.gather(self._restart_task, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()  # closes the listener and the connections in flight
            self._runner = None

    async def _restart(self) -> None:
        await self._runner.cleanup()
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
        """Stop serving (from any thread but the server's): the port closes, connections drop.
        Stopping twice is a no-op, so a test can kill a server its fixture stops again."""
        if self._thread is None or not self._thread.is_alive():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    kill = stop_thread

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

    def busy_fraction(self, start: float, end: float) -> float:
        """Slot time used between two monotonic times, over the slot time there was."""
        used = sum(max(0.0, min(b, end) - max(a, start)) for a, b in self.slot_log)
        return used / (self.slots * (end - start))

    def _track(self, delta: int) -> None:
        self._in_flight += delta
        if self.record:
            self.in_flight_log.append((time.monotonic(), self._in_flight))

    # ---- endpoints ----

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": VERSION})

    async def _tags(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [{**TAGS_MODEL, "digest": self.digest}]})

    async def _stats(self, request: web.Request) -> web.Response:
        """Not Ollama's: the benchmark's view of the slots (`slot_seconds` over slots x wall)."""
        return web.json_response({"slots": self.slots, "slot_seconds": self.slot_seconds,
                                  "requests": sum(self.requests.values()), "completions": sum(self.completions.values())})

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

    def _fault(self, prompt: str, attempt: int) -> str | None:
        if self.fault_rate:
            draw = hashlib.sha256(f"{self.seed}\0{prompt}\0{attempt}".encode()).digest()
            if int.from_bytes(draw[:8], "big") / 2**64 < self.fault_rate:
                return self.faults[draw[8] % len(self.faults)]
            return None
        return self.mode if attempt == 0 or self.mode in VARIANTS else None

    def _reply(self, prompt: str, fault: str | None, structured: bool) -> tuple[str, bool]:
        """The judge's answer and whether it holds a score."""
        if fault in ("always_non_integer", "non_integer"):
            return NOT_A_SCORE, False
        score = expected_score(prompt)
        text = orjson.dumps({"score": score}).decode() if structured else str(score)
        if fault == "long_line":
            text = " " * self.long_line_bytes + text  # white space around a score is allowed
        return text, True

    async def _admit(self, request: web.Request, body: dict) -> tuple[str, str | None] | web.StreamResponse:
        """Count the request; answer the request-level faults. Returns the prompt and its fault."""
        prompt = body["messages"][-1]["content"]
        attempt = self.requests[prompt]
        self.requests[prompt] += 1
        if self.record:
            self.bodies[prompt] = body
        fault = self._fault(prompt, attempt)
        if fault == "400":
            return web.json_response({"error": BAD_REQUEST}, status=400)
        if fault == "503" or (self.max_queue is not None and self._queued >= self.max_queue):
            return web.json_response({"error": BUSY}, status=503)
        if fault == "500":
            return web.json_response({"error": RUNNER_DIED}, status=500)
        if fault == "html_502":
            return web.Response(text=HTML_502, status=502, content_type="text/html")
        if fault == "text_500":
            return web.Response(text=TEXT_500, status=500, content_type="text/plain")
        if fault == "html_200":
            return web.Response(text=HTML_SIGN_IN, status=200, content_type="text/html")
        if fault == "echo_auth":
            echoed = f"<html><body><pre>Bad upstream for\n{request.method} {request.path_qs}\nAuthorization: " \
                     f"{request.headers.get('Authorization')}\n</pre></body></html>"
            return web.Response(text=echoed, status=500, content_type="text/html")
        if fault == "slow_first_byte":
            await asyncio.sleep(self.first_byte_delay_s)
        return prompt, fault

    async def _serve_slot(self) -> tuple[float, float]:
        """Wait for a slot and hold it for the service time; returns (queue wait, service) s."""
        arrived = time.monotonic()
        self._queued += 1
        try:
            await self._semaphore.acquire()
        finally:
            self._queued -= 1
        started = time.monotonic()
        try:
            await asyncio.sleep(self.latency_s)
        finally:
            ended = time.monotonic()
            self._semaphore.release()
            self.slot_seconds += ended - started
            if self.record:
                self.slot_log.append((started, ended))
        return started - arrived, ended - started

    def _finished(self, request: web.Request, prompt: str, fault: str | None, has_score: bool) -> None:
        """A reply is sent in full; it counts as a completion when it is usable, holds a score
        and its client is still there to read it."""
        client_gone = request.transport is None or request.transport.is_closing()
        if has_score and fault not in REPLY_FAULTS and not client_gone:
            self.completions[prompt] += 1
        self._completed += 1
        if self.restart_after is not None and self._completed == self.restart_after:
            self._restart_task = asyncio.ensure_future(self._restart())

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.authorizations.append(request.headers.get("Authorization"))
        body = orjson.loads(await request.read())
        if body["model"] not in ("llama3", "llama3:latest"):
            return web.json_response({"error": f"model '{body['model']}' not found"}, status=404)
        return await self._serve(request, body, self._chat_reply)

    async def _serve(self, request: web.Request, body: dict, reply) -> web.StreamResponse:
        """Admit the request (or answer with its injected fault), then `reply(request, body,
        prompt, fault)` while it counts as in flight: both protocols' requests go through here."""
        admitted = await self._admit(request, body)
        if isinstance(admitted, web.StreamResponse):
            return admitted
        prompt, fault = admitted
        self._track(+1)
        try:
            return await reply(request, body, prompt, fault)
        finally:
            self._track(-1)

    def _final_chunk(self, body: dict, prompt: str, content: str, started: float, queued: float,
                     service: float, fault: str | None) -> dict:
        num_ctx = (body.get("options") or {}).get("num_ctx", DEFAULT_NUM_CTX)
        final = {
            "model": body["model"],
            "created_at": _now_iso(),
            "message": {"role": "assistant", "content": ""},
            "done_reason": "stop",
            "done": True,
            "total_duration": int((time.monotonic() - started) * 1e9),
            "prompt_eval_count": min(prompt_tokens(prompt), num_ctx),  # a longer prompt is cut to fit
            "prompt_eval_duration": int(service / 2 * 1e9),
            "eval_count": len(content),
            "eval_duration": int(service / 2 * 1e9),
        }
        if fault == "no_prompt_count":  # a cached prompt: zero fields are left out
            del final["prompt_eval_count"], final["prompt_eval_duration"]
        if not self._loaded:  # the first request loads the model
            self._loaded = True
            final["load_duration"] = 1334875
            final["total_duration"] += 1334875
        if fault == "done_not_bool":
            final["done"] = "true"
        if fault == "duration_not_number":
            final["total_duration"] = "1.2s"
        return final

    async def _chat_reply(self, request, body, prompt, fault) -> web.StreamResponse:
        started = time.monotonic()
        content, has_score = self._reply(prompt, fault, isinstance(body.get("format"), dict))
        queued, service = await self._serve_slot()
        final = self._final_chunk(body, prompt, content, started, queued, service, fault)
        if body.get("stream") is False or fault == "nonstream":
            final["message"]["content"] = content
            self._finished(request, prompt, fault, has_score)
            return web.json_response(final)

        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        if fault in ("trickle", "long_garbage"):
            return await self._endless_or_long(request, response, fault)
        pieces = [content[i : i + 2] for i in range(0, len(content), 2)] if fault != "long_line" else [content]
        if fault == "final_text":
            final["message"]["content"] = pieces.pop()
        for number, piece in enumerate(pieces):
            chunk = {"model": body["model"], "created_at": _now_iso(),
                     "message": {"role": "assistant", "content": piece}, "done": False}
            if number == 0 and fault == "content_not_string":
                chunk["message"]["content"] = 42
            if number == 0 and fault == "message_not_object":
                chunk["message"] = piece
            line = orjson.dumps(chunk) + b"\n"
            if number == 0 and fault == "list_chunk":
                line = orjson.dumps([chunk]) + b"\n"
            await response.write(line)
            if number == 0 and fault == "drop":
                request.transport.abort()  # the connection dies mid-reply
                return response
            if number == 0 and fault in ("error_line", "malformed"):
                await response.write(orjson.dumps({"error": MID_STREAM_ERROR}) + b"\n" if fault == "error_line"
                                     else b'{"model":"llama3","created_at":"2024-\n')
                await response.write_eof()
                return response
        last = orjson.dumps(final) + b"\n"
        if fault == "truncated_json":
            await response.write(last[: len(last) // 2])
            await response.write_eof()
            return response
        self._finished(request, prompt, fault, has_score)  # before the write: a client may close once it has it
        await response.write(last)
        await response.write_eof()
        return response

    async def _endless_or_long(self, request, response, fault) -> web.StreamResponse:
        if fault == "long_garbage":  # one line of long_line_bytes that is not JSON, then the end
            block = b"x" * 65536
            for _ in range(self.long_line_bytes // len(block)):
                await response.write(block)
            await response.write(b"\n")
            await response.write_eof()
            return response
        deadline = time.monotonic() + 60  # stops by itself, client or not
        while time.monotonic() < deadline and not request.transport.is_closing():
            await response.write(b" ")
            await asyncio.sleep(self.trickle_interval_s)
        return response

    async def _v1_chat(self, request: web.Request) -> web.StreamResponse:
        if refused := self._unauthorized(request):
            return refused
        body = orjson.loads(await request.read())
        if body["model"] != "llama3":
            return web.json_response(
                {"error": {"message": f"model '{body['model']}' not found", "type": "api_error"}}, status=404
            )
        return await self._serve(request, body, self._v1_chat_reply)

    async def _v1_chat_reply(self, request, body, prompt, fault) -> web.StreamResponse:
        structured = (body.get("response_format") or {}).get("type") in ("json_schema", "json_object")
        content, has_score = self._reply(prompt, fault, structured)
        await self._serve_slot()
        if fault == "drop":
            request.transport.abort()
            return web.Response()
        message = {"role": "assistant", "content": 42 if fault == "content_not_string" else content}
        reply = {
            "id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()),
            "model": "llama3", "system_fingerprint": "fp_ollama",
            "choices": [{"index": 0, "message": content if fault == "message_not_object" else message,
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens(prompt), "completion_tokens": len(content),
                      "total_tokens": prompt_tokens(prompt) + len(content)},
        }
        if fault == "error_line":
            reply = {"error": {"message": MID_STREAM_ERROR, "type": "api_error"}}
        data = orjson.dumps([reply] if fault == "list_chunk" else reply)
        if fault in ("malformed", "truncated_json"):
            data = data[: len(data) // 2]
        if fault in ("trickle", "long_garbage"):
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            await response.prepare(request)
            return await self._endless_or_long(request, response, fault)
        self._finished(request, prompt, fault, has_score)
        return web.Response(body=data, content_type="application/json")


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
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    args = parser.parse_args()
    server = FakeOllama(slots=args.slots, latency_s=args.latency, fault_rate=args.fault_rate, seed=args.seed,
                        port=args.port, record=False)
    try:
        asyncio.run(_serve_until_cancelled(server, args.port_file))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
