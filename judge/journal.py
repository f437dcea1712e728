"""The resume journal: every final judgement, appended as soon as it arrives.

One JSON object per line, keyed by a hash of everything that decides the judge's reply (the
prompt, the model's digest where the server reports one or else its id, the API, sampling
options and the structured flag), so a changed prompt or judge re-scores and an unchanged one
is never requested twice. Each line is written with one `write` and flushed, so a crash or
SIGKILL loses at most the requests in flight; a torn last line (a crash mid-write) or a
corrupt one is skipped on reading and its entry scored again.

Only final results are journaled: scores and unparseable replies (the judge answered; at
temperature 0 it would answer the same again). Failed requests are not: they are retried on
the next run.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import orjson

from judge.clients import ServerConfig, ServerInfo

JOURNAL_VERSION = 2  # 2: the key holds the model's digest; `truncated`; `reply` only when unparseable


@dataclass(frozen=True, slots=True)
class Result:
    """The outcome of judging one prompt."""

    score: int | None  # None: unparseable (reply set) or failed (error set)
    reply: str | None = None
    error: str | None = None
    truncated: bool | None = None  # the judge saw only part of the prompt; None: unknown


class RequestKey:
    """A prompt's journal key for one judge: the sha256 of {"prompt", "model", "api",
    "options", "structured"} (orjson, sorted keys), `model` being {"digest": ...} where the
    server reports one, else {"id": ...}. The fixed part is serialized once (a million keys
    are made twice per run); the bytes hashed are those of the whole object."""

    def __init__(self, server: ServerConfig, info: ServerInfo):
        identity = {
            "prompt": "",
            "model": {"digest": info.digest} if info.digest else {"id": server.model},
            "api": server.api,
            "options": server.options,
            "structured": server.structured,
        }
        head, _, self._tail = orjson.dumps(identity, option=orjson.OPT_SORT_KEYS).partition(b'"prompt":""')
        self._head = head + b'"prompt":'

    def __call__(self, prompt: str) -> str:
        return hashlib.sha256(self._head + orjson.dumps(prompt) + self._tail).hexdigest()


def _record(line: bytes) -> tuple[str, Result] | None:
    try:
        record = orjson.loads(line)
        key, score, truncated = record["key"], record["score"], record.get("truncated")
        reply = record.get("reply") if score is None else None
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return None
    valid = (
        isinstance(key, str)
        and (score is None and isinstance(reply, str) or type(score) is int and 0 <= score <= 100)
        and truncated in (None, True, False)
    )
    return (key, Result(score, reply, truncated=truncated)) if valid else None


class Journal:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file = None

    def records(self) -> Iterator[tuple[str, Result]]:
        """Finished results by request key, read line by line (a torn or corrupt line is skipped:
        that entry is scored again)."""
        try:
            file = open(self.path, "rb")
        except FileNotFoundError:
            return
        with file:
            for line in file:
                record = _record(line)
                if record is not None:
                    yield record

    def append(self, key: str, result: Result) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab")
            if self._file.tell() and not self._ends_with_newline():
                self._file.write(b"\n")  # end a torn last line so the next record stands alone
        record = {"v": JOURNAL_VERSION, "key": key, "score": result.score, "truncated": result.truncated,
                  "time": time.time()}
        if result.score is None:
            record["reply"] = result.reply
        self._file.write(orjson.dumps(record) + b"\n")
        self._file.flush()

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, 2)
            return f.read(1) == b"\n"

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
