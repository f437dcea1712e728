"""Reading a judge server's reply defensively.

Whatever arrives (a chunk that is a JSON list, a field of the wrong type, a proxy's HTML page,
a cut or endless line, a server that trickles a byte at a time), the result is either a
well-formed reply or a `RequestError` with a one-line message. A malformed reply is
retryable: a proxy or a restarting server usually answers properly on the next try. Time is
bounded by the request's total timeout (aiohttp's `total` covers reading the body); size by
`MAX_REPLY_BYTES`.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

import aiohttp
import orjson

MAX_REPLY_BYTES = 64 * 2**20  # a judge's reply is a few tokens: a bound, not a working size
ERROR_BODY_BYTES = 64 * 2**10  # of an error page: enough for its message
MESSAGE_CHARS = 200  # of the server's text, kept in an error message
# The HTTP statuses worth retrying, and those among them that mean "slow down".
RETRY_STATUSES = {429, 500, 502, 503, 504}
OVERLOAD_STATUSES = {429, 503}
# The final chunk's numbers: durations in nanoseconds and token counts (Ollama's docs/api.md).
OLLAMA_NUMBERS = (
    "total_duration", "load_duration", "prompt_eval_duration", "eval_duration", "prompt_eval_count", "eval_count",
)

_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.I | re.S)
_TAG = re.compile(r"<[^>]*>")
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}


class RequestError(Exception):
    """A request that got no usable reply: `retryable` when trying again can help, `overload`
    when the server signalled it is saturated (503, 429, a timeout), `unreachable` when no
    connection could be made (no server listens there)."""

    def __init__(self, message: str, retryable: bool, overload: bool = False, unreachable: bool = False):
        super().__init__(message)
        self.retryable = retryable
        self.overload = overload
        self.unreachable = unreachable


def one_line(text: str, limit: int = MESSAGE_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def json_type(value) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def error_text(body: bytes) -> str:
    """The server's message in one line: Ollama's {"error": "..."}, OpenAI's
    {"error": {"message": ...}}, an HTML page's title (or its text), or the plain text."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        obj = None
    if isinstance(obj, dict) and "error" in obj:
        error = obj["error"]
        if isinstance(error, dict) and "message" in error:
            error = error["message"]
        return one_line(error if isinstance(error, str) else orjson.dumps(error).decode())
    text = body.decode("utf-8", "replace")
    if "<html" in text[:1000].lower() or "<!doctype" in text[:1000].lower():
        title = _TITLE.search(text)
        text = title.group(1) if title and title.group(1).strip() else _TAG.sub(" ", text)
    return one_line(text) or "(empty body)"


async def read_body(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body, or its first `limit` bytes (the rest is not read: the connection is dropped)."""
    parts, size = [], 0
    async for data in resp.content.iter_any():
        parts.append(data)
        size += len(data)
        if size >= limit:
            break
    return b"".join(parts)[:limit]


async def read_reply(resp: aiohttp.ClientResponse) -> bytes:
    body = await read_body(resp, MAX_REPLY_BYTES + 1)
    if len(body) > MAX_REPLY_BYTES:
        raise RequestError(f"the reply is longer than {MAX_REPLY_BYTES // 2**20} MiB", retryable=True)
    return body


class ReplyLines:
    """The body's lines, each as long as it is (aiohttp's own line reader refuses a line over its
    buffer size), up to MAX_REPLY_BYTES in all; a last line without its newline comes too.

    A class rather than an async generator: the reader stops at the final chunk, and an async
    generator left unfinished costs a finalizer task per request."""

    def __init__(self, resp: aiohttp.ClientResponse):
        self._content = resp.content
        self._lines: deque[bytes] = deque()
        self._pending: list[bytes] = []  # pieces of the line being read
        self._size = 0
        self._eof = False

    def __aiter__(self) -> ReplyLines:
        return self

    async def __anext__(self) -> bytes:
        while not self._lines:
            if self._eof:
                raise StopAsyncIteration
            data = await self._content.readany()
            if not data:
                self._eof = True
                if self._pending:
                    self._lines.append(b"".join(self._pending))
                continue
            self._size += len(data)
            if self._size > MAX_REPLY_BYTES:
                raise RequestError(f"the reply is longer than {MAX_REPLY_BYTES // 2**20} MiB", retryable=True)
            start = 0
            while (end := data.find(b"\n", start)) >= 0:
                self._pending.append(data[start:end])
                self._lines.append(b"".join(self._pending))
                self._pending.clear()
                start = end + 1
            if start < len(data):
                self._pending.append(data[start:])
        return self._lines.popleft()


def status_error(status: int, body: bytes) -> RequestError:
    return RequestError(f"HTTP {status}: {error_text(body)}", retryable=status in RETRY_STATUSES,
                        overload=status in OVERLOAD_STATUSES)


async def check_content_type(resp: aiohttp.ClientResponse, expected: tuple[str, ...]) -> None:
    """A 200 of another type is a proxy's page or a different server, not the judge's reply."""
    if resp.content_type not in expected:
        text = error_text(await read_body(resp, ERROR_BODY_BYTES))
        raise RequestError(f"unexpected content type {resp.content_type}: {text}", retryable=True)


def _malformed(what: str, value) -> RequestError:
    return RequestError(f"malformed reply: {what} is {json_type(value)}", retryable=True)


def _parse_object(line: bytes, where: str) -> dict:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        preview = one_line(line[:100].decode("utf-8", "replace"), 100)
        raise RequestError(f"malformed reply: {where} is not JSON: {preview!r}", retryable=True) from None
    if not isinstance(obj, dict):
        raise _malformed(where, obj)
    if "error" in obj:
        raise RequestError(f"server error: {error_text(line)}", retryable=True)
    return obj


@dataclass(frozen=True, slots=True)
class OllamaChunk:
    content: str
    done: bool
    numbers: dict[str, float]  # the final chunk's durations (ns) and token counts, where sent


def ollama_chunk(line: bytes) -> OllamaChunk:
    """One line of `/api/chat`'s NDJSON stream, checked field by field."""
    chunk = _parse_object(line, "a chunk")
    message = chunk.get("message", {})
    if not isinstance(message, dict):
        raise _malformed("'message'", message)
    content = message.get("content", "")
    if not isinstance(content, str):
        raise _malformed("'message.content'", content)
    done = chunk.get("done", False)
    if not isinstance(done, bool):
        raise _malformed("'done'", done)
    numbers = {}
    for name in OLLAMA_NUMBERS if done else ():  # read from the final chunk only
        if name in chunk:
            value = chunk[name]
            if type(value) not in (int, float) or value < 0:
                raise _malformed(f"'{name}'", value)
            numbers[name] = value
    return OllamaChunk(content, done, numbers)


def openai_content(body: bytes) -> str:
    """The reply text of a `/v1/chat/completions` response (null content: an empty reply)."""
    reply = _parse_object(body, "the reply")
    choices = reply.get("choices")
    if not isinstance(choices, list):
        raise _malformed("'choices'", choices)
    if not choices:
        raise RequestError("malformed reply: 'choices' is empty", retryable=True)
    message = choices[0].get("message") if isinstance(choices[0], dict) else choices[0]
    if not isinstance(message, dict):
        raise _malformed("'choices[0].message'", message)
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise _malformed("'choices[0].message.content'", content)
    return content or ""
