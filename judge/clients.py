"""HTTP clients for the two judge APIs: Ollama's `/api/chat` and OpenAI's `/v1/chat/completions`.

Each client checks the server before scoring (`check`) and sends one prompt (`chat`). `chat`
turns every way a request can go wrong into a `RequestError` (judge/replies.py) that says
whether trying again can help and whether the server signalled overload (which the
concurrency limiter backs off on). Every message is scrubbed of the URL's credentials and the
API key before it leaves the client. Server behaviour followed here is Ollama's docs/api.md:

- `/api/chat` streams NDJSON chunks `{"message": {"content": ...}, "done": false}` and a final
  `"done": true` chunk with durations in nanoseconds (zero fields left out, and it may still
  carry text). A non-streamed reply is that final object alone; both are read the same way.
- Errors are `{"error": "..."}` with 400 (bad request), 404 (model not found), 503 (busy),
  500 (other), or an `{"error": ...}` line inside a 200 stream when the model fails mid-reply.
- The time a request waited in the server's queue is
  `total_duration - load_duration - prompt_eval_duration - eval_duration`.
- `prompt_eval_count` is the number of prompt tokens the model read. A prompt longer than
  `num_ctx` is cut to fit without an error, so a count within `TRUNCATION_MARGIN` of `num_ctx`
  means the judge saw only part of it. The count is left out where Ollama reused a cached
  prompt: then nobody knows.
- `/api/tags` lists each model with its `digest`, which changes when `ollama pull` brings a
  new version under the same name.

OpenAI-compatible servers (vLLM, llama.cpp, Ollama's `/v1`) get non-streamed requests with
`seed` and `temperature` as top-level fields; they report no queue time, no model digest and
no context size (the prompt's truncation is unknown).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import aiohttp
import orjson

from judge.redact import Redactor, redact_url
from judge.replies import (
    ERROR_BODY_BYTES,
    ReplyLines,
    RequestError,
    check_content_type,
    error_text,
    ollama_chunk,
    openai_content,
    read_body,
    read_reply,
    status_error,
)

# The chapter's options. Every request carries the same ones: a different num_ctx makes
# Ollama reload the model.
OLLAMA_OPTIONS = {"seed": 123, "temperature": 0, "num_ctx": 2048}
OPENAI_OPTIONS = {"seed": 123, "temperature": 0}  # num_ctx has no OpenAI equivalent
TRUNCATION_MARGIN = 16  # prompt tokens this close to num_ctx: Ollama cut the prompt to fit
# Ollama unloads a model 5 minutes after its last request by default; a longer keep_alive keeps
# it loaded through pauses (retries, a slow client), so no request pays for a reload.
KEEP_ALIVE = "30m"
CHECK_TIMEOUT_S = 30.0
SCORE_SCHEMA = {
    "type": "object",
    "properties": {"score": {"type": "integer", "minimum": 0, "maximum": 100}},
    "required": ["score"],
}


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
    def shown_url(self) -> str:
        """The URL as printed and written: without credentials."""
        return redact_url(self.base_url)

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
    digest: str | None  # the model's digest (Ollama's /api/tags); None where the server has none
    version: str | None  # the server's version

    @property
    def short_digest(self) -> str | None:
        """The first 12 hex digits, as `ollama list` shows them."""
        return self.digest[:12] if self.digest else None


@dataclass(frozen=True, slots=True)
class Reply:
    content: str
    latency_s: float  # client-side, request sent to final chunk read
    queue_wait_s: float | None  # server-side queue time, where the server reports it
    truncated: bool | None  # the prompt was cut to fit the context; None: unknown


class CheckError(Exception):
    """The server cannot be used for this run (unreachable, model missing, key refused)."""


class Client:
    """What both APIs share: one request with its timeout and the mapping of failures."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self.redact = Redactor.for_server(config.url, config.api_key)
        self.base_url = config.base_url
        self.options = config.options  # the same with every request: built once
        self.timeout = aiohttp.ClientTimeout(total=config.timeout_s)
        self.headers = {"Content-Type": "application/json"}
        if config.api_key:
            self.headers["Authorization"] = f"Bearer {config.api_key}"

    async def _get_json(self, session: aiohttp.ClientSession, path: str) -> dict:
        url, shown = self.base_url + path, self.config.shown_url + path
        timeout = aiohttp.ClientTimeout(total=min(CHECK_TIMEOUT_S, self.config.timeout_s))
        try:
            async with session.get(url, headers=self.headers, timeout=timeout) as resp:
                if resp.status == 401:
                    raise CheckError(f"{shown}: the server refused the API key (HTTP 401)")
                if resp.status != 200:
                    text = self.redact(error_text(await read_body(resp, ERROR_BODY_BYTES)))
                    raise CheckError(f"{shown}: HTTP {resp.status}: {text}")
                body = await read_reply(resp)
        except (aiohttp.ClientError, asyncio.TimeoutError, RequestError) as e:
            reason = self.redact(str(e)) or type(e).__name__
            raise CheckError(f"cannot reach the judge server at {shown} ({reason})") from None
        try:
            reply = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise CheckError(f"{shown}: reply is not JSON") from None
        if not isinstance(reply, dict):
            raise CheckError(f"{shown}: reply is not a JSON object")
        return reply

    async def chat(self, session: aiohttp.ClientSession, prompt: str) -> Reply:
        start = time.monotonic()
        try:
            content, queue_wait_s, truncated = await self._chat(session, prompt)
        except asyncio.TimeoutError:
            raise RequestError(f"no complete reply within {self.config.timeout_s:g} s", True, overload=True) from None
        except aiohttp.ClientConnectorError as e:  # no connection could be made
            raise RequestError(self.redact(f"cannot connect: {e}"), True, unreachable=True) from None
        except aiohttp.ClientError as e:
            raise RequestError(self.redact(f"connection error: {e or type(e).__name__}"), True) from None
        except RequestError as e:
            raise RequestError(self.redact(str(e)), e.retryable, e.overload, e.unreachable) from None
        return Reply(content, time.monotonic() - start, queue_wait_s, truncated)

    def _post(self, session: aiohttp.ClientSession, path: str, payload: dict):
        return session.post(
            self.base_url + path,
            data=orjson.dumps(payload),
            headers=self.headers,
            timeout=self.timeout,
        )


def _queue_wait_s(numbers: dict[str, float]) -> float | None:
    if "total_duration" not in numbers:
        return None
    busy = numbers.get("load_duration", 0) + numbers.get("prompt_eval_duration", 0) + numbers.get("eval_duration", 0)
    return max(0.0, (numbers["total_duration"] - busy) / 1e9)


class OllamaClient(Client):
    async def check(self, session: aiohttp.ClientSession) -> ServerInfo:
        version = (await self._get_json(session, "/api/version")).get("version")
        models = (await self._get_json(session, "/api/tags")).get("models")
        model = self.config.model
        wanted = model if ":" in model else f"{model}:latest"  # `llama3` means `llama3:latest`
        for listed in models if isinstance(models, list) else []:
            if isinstance(listed, dict) and wanted in (listed.get("name"), listed.get("model")):
                name, digest = listed.get("name"), listed.get("digest")
                return ServerInfo(
                    name if isinstance(name, str) else wanted,
                    digest if isinstance(digest, str) and digest else None,
                    version if isinstance(version, str) else None,
                )
        raise CheckError(
            f"model '{model}' is not on the Ollama server at {self.config.shown_url}: "
            f"run `ollama pull {model}` there"
        )

    async def _chat(self, session: aiohttp.ClientSession, prompt: str) -> tuple[str, float | None, bool | None]:
        payload = {
            "model": self.config.model,
            "messages": [{"role": "user", "content": prompt}],
            "options": self.options,
            "keep_alive": KEEP_ALIVE,
            "stream": True,
        }
        if self.config.structured:
            payload["format"] = SCORE_SCHEMA
        async with self._post(session, "/api/chat", payload) as resp:
            if resp.status != 200:
                raise status_error(resp.status, await read_body(resp, ERROR_BODY_BYTES))
            await check_content_type(resp, ("application/x-ndjson", "application/json"))
            parts = []
            async for line in ReplyLines(resp):  # one JSON object per line
                if not line.strip():
                    continue
                chunk = ollama_chunk(line)
                parts.append(chunk.content)
                if chunk.done:  # the final chunk may still carry text
                    return "".join(parts), _queue_wait_s(chunk.numbers), self._truncated(chunk.numbers)
            raise RequestError("the reply stream ended before its final chunk", retryable=True)

    def _truncated(self, numbers: dict[str, float]) -> bool | None:
        if "prompt_eval_count" not in numbers:
            return None
        return numbers["prompt_eval_count"] >= self.options["num_ctx"] - TRUNCATION_MARGIN


class OpenAIClient(Client):
    def __init__(self, config: ServerConfig):
        super().__init__(config)
        # OpenAI's structured-output form. llama-cpp-python's server predates it and rejects it
        # (its ResponseFormat only knows "json_object" with a "schema", and it answers the
        # validation error with a 500): on an error that names response_format the client
        # switches, once, to that older form, which llama.cpp's servers accept.
        self.schema_form = "json_schema"

    async def check(self, session: aiohttp.ClientSession) -> ServerInfo:
        data = (await self._get_json(session, "/v1/models")).get("data")
        served = [m.get("id") for m in data if isinstance(m, dict)] if isinstance(data, list) else []
        if self.config.model not in served:
            raise CheckError(
                f"model '{self.config.model}' is not served at {self.config.shown_url} "
                f"(it serves: {', '.join(map(str, served)) or 'nothing'}); "
                f"on Ollama run `ollama pull {self.config.model}`"
            )
        return ServerInfo(self.config.model, None, None)

    def _response_format(self) -> dict:
        if self.schema_form == "json_schema":
            return {"type": "json_schema", "json_schema": {"name": "score", "strict": True, "schema": SCORE_SCHEMA}}
        return {"type": "json_object", "schema": SCORE_SCHEMA}

    async def _chat(self, session: aiohttp.ClientSession, prompt: str) -> tuple[str, None, None]:
        payload = {
            "model": self.config.model,
            "messages": [{"role": "user", "content": prompt}],
            "stream": False,
            **self.options,
        }
        while True:
            if self.config.structured:
                payload["response_format"] = self._response_format()
            async with self._post(session, "/v1/chat/completions", payload) as resp:
                if resp.status == 200:
                    await check_content_type(resp, ("application/json",))
                    return openai_content(await read_reply(resp)), None, None
                status, body = resp.status, await read_body(resp, ERROR_BODY_BYTES)
            if b"response_format" in body and self.config.structured and self.schema_form == "json_schema":
                self.schema_form = "json_object"
                continue
            raise status_error(status, body)


def make_client(config: ServerConfig) -> Client:
    return OllamaClient(config) if config.api == "ollama" else OpenAIClient(config)
