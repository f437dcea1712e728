"""HTTP clients for the two judge APIs: Ollama's `/api/chat` and OpenAI's `/v1/chat/completions`.

Each client checks the server before scoring (`check`) and sends one prompt (`chat`). `chat`
turns every way a request can go wrong into a `RequestError` that says whether trying again
can help (`retryable`) and whether the server signalled overload (`overload`, which the
concurrency limiter backs off on). Server behaviour followed here is Ollama's docs/api.md:

- `/api/chat` streams NDJSON chunks `{"message": {"content": ...}, "done": false}` and a final
  `"done": true` chunk with durations in nanoseconds (zero fields left out, and it may still
  carry text). A non-streamed reply is that final object alone; both are read the same way.
- Errors are `{"error": "..."}` with 400 (bad request), 404 (model not found), 503 (busy),
  500 (other), or an `{"error": ...}` line inside a 200 stream when the model fails mid-reply.
- The time a request waited in the server's queue is
  `total_duration - load_duration - prompt_eval_duration - eval_duration`.

OpenAI-compatible servers (vLLM, llama.cpp, Ollama's `/v1`) get non-streamed requests with
`seed` and `temperature` as top-level fields; they report no queue time.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import aiohttp
import orjson

# The chapter's options. Every request carries the same ones: a different num_ctx makes
# Ollama reload the model.
OLLAMA_OPTIONS = {"seed": 123, "temperature": 0, "num_ctx": 2048}
OPENAI_OPTIONS = {"seed": 123, "temperature": 0}  # num_ctx has no OpenAI equivalent
# Ollama unloads a model 5 minutes after its last request by default; a longer keep_alive keeps
# it loaded through pauses (retries, a slow client), so no request pays for a reload.
KEEP_ALIVE = "30m"
SCORE_SCHEMA = {
    "type": "object",
    "properties": {"score": {"type": "integer", "minimum": 0, "maximum": 100}},
    "required": ["score"],
}
# The HTTP statuses worth retrying, and those among them that mean "slow down".
RETRY_STATUSES = {429, 500, 502, 503, 504}
OVERLOAD_STATUSES = {429, 503}


@dataclass(frozen=True)
class ServerConfig:
    url: str  # e.g. http://localhost:11434 (a trailing /v1 is accepted for --api openai)
    api: str  # "ollama" or "openai"
    model: str
    structured: bool = False
    max_tokens: int | None = None  # num_predict on Ollama, max_tokens on OpenAI
    timeout_s: float = 300.0  # per request, headers to final chunk
    api_key: str | None = field(default=None, repr=False)  # never printed

    @property
    def base_url(self) -> str:
        url = self.url.rstrip("/")
        return url[: -len("/v1")] if self.api == "openai" and url.endswith("/v1") else url

    @property
    def options(self) -> dict:
        """The sampling options sent with every request (and hashed into the journal key)."""
        if self.api == "ollama":
            options = dict(OLLAMA_OPTIONS)
            if self.max_tokens is not None:
                options["num_predict"] = self.max_tokens
        else:
            options = dict(OPENAI_OPTIONS)
            if self.max_tokens is not None:
                options["max_tokens"] = self.max_tokens
        return options


@dataclass(frozen=True)
class ServerInfo:
    model: str  # the name the server lists, e.g. llama3:latest
    digest: str | None  # the model's digest (first 12 hex digits, as `ollama list`)
    version: str | None  # the server's version


@dataclass(frozen=True)
class Reply:
    content: str
    latency_s: float  # client-side, request sent to final chunk read
    queue_wait_s: float | None  # server-side queue time, where the server reports it


class CheckError(Exception):
    """The server cannot be used for this run (unreachable, model missing, key refused)."""


class RequestError(Exception):
    def __init__(self, message: str, retryable: bool, overload: bool = False):
        super().__init__(message)
        self.retryable = retryable
        self.overload = overload


def _error_text(body: bytes) -> str:
    """The server's error message: Ollama's {"error": "..."}, OpenAI's {"error": {"message"}}."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:200].decode("utf-8", "replace").strip() or "(empty body)"
    error = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(error, dict):
        error = error.get("message")
    return str(error) if error else body[:200].decode("utf-8", "replace")


def _status_error(status: int, body: bytes) -> RequestError:
    return RequestError(
        f"HTTP {status}: {_error_text(body)}",
        retryable=status in RETRY_STATUSES,
        overload=status in OVERLOAD_STATUSES,
    )


def _queue_wait_s(final: dict) -> float | None:
    if "total_duration" not in final:
        return None
    busy = sum(final.get(k, 0) for k in ("load_duration", "prompt_eval_duration", "eval_duration"))
    return max(0.0, (final["total_duration"] - busy) / 1e9)


class Client:
    """What both APIs share: one request with its timeout and the mapping of failures."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self.headers = {"Content-Type": "application/json"}
        if config.api_key:
            self.headers["Authorization"] = f"Bearer {config.api_key}"

    async def _get_json(self, session: aiohttp.ClientSession, path: str) -> dict:
        url = self.config.base_url + path
        try:
            async with session.get(url, headers=self.headers, timeout=aiohttp.ClientTimeout(total=30)) as resp:
                body = await resp.read()
                if resp.status == 401:
                    raise CheckError(f"{url}: the server refused the API key (HTTP 401)")
                if resp.status != 200:
                    raise CheckError(f"{url}: HTTP {resp.status}: {_error_text(body)}")
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise CheckError(f"cannot reach the judge server at {url} ({e or type(e).__name__})") from None
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            raise CheckError(f"{url}: reply is not JSON") from None

    async def chat(self, session: aiohttp.ClientSession, prompt: str) -> Reply:
        start = time.monotonic()
        try:
            content, queue_wait_s = await self._chat(session, prompt)
        except asyncio.TimeoutError:
            raise RequestError(f"no complete reply within {self.config.timeout_s:g} s", True, True) from None
        except aiohttp.ClientError as e:
            raise RequestError(f"connection error: {e or type(e).__name__}", retryable=True) from None
        return Reply(content, time.monotonic() - start, queue_wait_s)

    def _post(self, session: aiohttp.ClientSession, path: str, payload: dict):
        return session.post(
            self.config.base_url + path,
            data=orjson.dumps(payload),
            headers=self.headers,
            timeout=aiohttp.ClientTimeout(total=self.config.timeout_s),
        )


class OllamaClient(Client):
    async def check(self, session: aiohttp.ClientSession) -> ServerInfo:
        version = (await self._get_json(session, "/api/version")).get("version")
        models = (await self._get_json(session, "/api/tags")).get("models") or []
        model = self.config.model
        wanted = model if ":" in model else f"{model}:latest"  # `llama3` means `llama3:latest`
        for listed in models:
            if wanted in (listed.get("name"), listed.get("model")):
                digest = listed.get("digest")
                return ServerInfo(listed.get("name") or wanted, digest[:12] if digest else None, version)
        raise CheckError(
            f"model '{model}' is not on the Ollama server at {self.config.base_url}: "
            f"run `ollama pull {model}` there"
        )

    async def _chat(self, session: aiohttp.ClientSession, prompt: str) -> tuple[str, float | None]:
        payload = {
            "model": self.config.model,
            "messages": [{"role": "user", "content": prompt}],
            "options": self.config.options,
            "keep_alive": KEEP_ALIVE,
            "stream": True,
        }
        if self.config.structured:
            payload["format"] = SCORE_SCHEMA
        async with self._post(session, "/api/chat", payload) as resp:
            if resp.status != 200:
                raise _status_error(resp.status, await resp.read())
            parts = []
            async for line in resp.content:  # one JSON object per line
                if not line.strip():
                    continue
                try:
                    chunk = orjson.loads(line)
                except orjson.JSONDecodeError:
                    raise RequestError(f"malformed line in the reply stream: {line[:80]!r}", True) from None
                if "error" in chunk:
                    raise RequestError(f"server error mid-reply: {chunk['error']}", retryable=True)
                parts.append((chunk.get("message") or {}).get("content") or "")
                if chunk.get("done"):  # the final chunk may still carry text
                    return "".join(parts), _queue_wait_s(chunk)
            raise RequestError("the reply stream ended before its final chunk", retryable=True)


class OpenAIClient(Client):
    def __init__(self, config: ServerConfig):
        super().__init__(config)
        # OpenAI's structured-output form. llama-cpp-python's server predates it and rejects it
        # (its ResponseFormat only knows "json_object" with a "schema", and it answers the
        # validation error with a 500): on an error that names response_format the client
        # switches, once, to that older form, which llama.cpp's servers accept.
        self.schema_form = "json_schema"

    async def check(self, session: aiohttp.ClientSession) -> ServerInfo:
        served = [m.get("id") for m in (await self._get_json(session, "/v1/models")).get("data") or []]
        if self.config.model not in served:
            raise CheckError(
                f"model '{self.config.model}' is not served at {self.config.base_url} "
                f"(it serves: {', '.join(map(str, served)) or 'nothing'}); "
                f"on Ollama run `ollama pull {self.config.model}`"
            )
        return ServerInfo(self.config.model, None, None)

    def _response_format(self) -> dict:
        if self.schema_form == "json_schema":
            return {"type": "json_schema", "json_schema": {"name": "score", "strict": True, "schema": SCORE_SCHEMA}}
        return {"type": "json_object", "schema": SCORE_SCHEMA}

    async def _chat(self, session: aiohttp.ClientSession, prompt: str) -> tuple[str, float | None]:
        payload = {
            "model": self.config.model,
            "messages": [{"role": "user", "content": prompt}],
            "stream": False,
            **self.config.options,
        }
        while True:
            if self.config.structured:
                payload["response_format"] = self._response_format()
            async with self._post(session, "/v1/chat/completions", payload) as resp:
                body = await resp.read()
                status = resp.status
            if status != 200 and b"response_format" in body and self.schema_form == "json_schema":
                self.schema_form = "json_object"
                continue
            if status != 200:
                raise _status_error(status, body)
            try:
                return orjson.loads(body)["choices"][0]["message"]["content"] or "", None
            except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
                raise RequestError(f"malformed reply: {body[:80]!r}", retryable=True) from None


def make_client(config: ServerConfig) -> Client:
    return OllamaClient(config) if config.api == "ollama" else OpenAIClient(config)
