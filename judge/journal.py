"""The resume journal: every final judgement, appended as soon as it arrives.

One JSON object per line, keyed by a hash of everything that decides the judge's reply (the
prompt, model, API, sampling options and the structured flag), so a changed prompt or judge
re-scores and an unchanged one is never requested twice. Each line is written with one
`write` and flushed, so a crash or SIGKILL loses at most the requests in flight; a torn last
line (a crash mid-write) or a corrupt one is skipped on reading and its entry scored again.

Only final results are journaled: scores and unparseable replies (the judge answered; at
temperature 0 it would answer the same again). Failed requests are not: they are retried on
the next run.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import orjson

from judge.clients import ServerConfig


def request_key(prompt: str, server: ServerConfig) -> str:
    identity = {
        "prompt": prompt,
        "model": server.model,
        "api": server.api,
        "options": server.options,
        "structured": server.structured,
    }
    return hashlib.sha256(orjson.dumps(identity, option=orjson.OPT_SORT_KEYS)).hexdigest()


class Journal:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file = None

    def load(self) -> dict[str, dict]:
        """Finished results by request key: {"score": int | None, "reply": str}."""
        results = {}
        try:
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            return results
        for line in lines:
            try:
                record = orjson.loads(line)
                results[record["key"]] = {"score": record["score"], "reply": record["reply"]}
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue  # a torn or corrupt line: that entry is scored again
        return results

    def append(self, key: str, score: int | None, reply: str) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab")
            if self._file.tell() and not self._ends_with_newline():
                self._file.write(b"\n")  # end a torn last line so the next record stands alone
        record = {"v": 1, "key": key, "score": score, "reply": reply, "time": time.time()}
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
