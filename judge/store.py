"""The run's working index, on disk: each distinct prompt of the input with its result, so that
memory stays flat however many entries the input holds.

A SQLite file beside the output (`OUT.work.sqlite`), built at the start of each run from the
input and the journal and deleted at its end; one left behind by a killed run is replaced by
the next. It is an index, not a record: the journal is (durability settings are off here, and
a crash loses nothing the journal holds). Two tables:

- `results`: every request key of the input, with its result once known (and the journal's
  results for keys the input may hold);
- `todo`: the prompts to request, in input order, read by the dispatcher in batches.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Iterable, Iterator

from judge.journal import Result

BATCH = 512  # todo rows read, and results written, at a time
CACHE_KIB = 2 * 1024  # SQLite's page cache (resident memory); the OS caches the rest of the file
# A key's state while planning: known from the journal but not yet met in the input; met and
# answered (from the journal or this run); met and still to request.
JOURNAL, RESOLVED, PENDING = 1, 2, 0


class Store:
    def __init__(self, path: Path):
        self.path = path
        path.unlink(missing_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None)  # transactions are explicit
        for pragma in ("journal_mode=OFF", "synchronous=OFF", f"cache_size=-{CACHE_KIB}", "temp_store=FILE"):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.execute(
            "CREATE TABLE results (key TEXT PRIMARY KEY, state INTEGER NOT NULL, score INTEGER, reply TEXT,"
            " error TEXT, truncated INTEGER) WITHOUT ROWID"
        )
        self.db.execute("CREATE TABLE todo (seq INTEGER PRIMARY KEY, key TEXT NOT NULL, prompt TEXT NOT NULL)")
        self.db.execute("BEGIN")
        self._finished: list[tuple] = []  # results not yet written (written BATCH at a time)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.db.close()
        self.path.unlink(missing_ok=True)

    def commit(self) -> None:
        self._write_finished()
        self.db.execute("COMMIT")
        self.db.execute("BEGIN")

    def add_journal(self, records: Iterable[tuple[str, Result]]) -> None:
        """The journal's results: used for the keys the input holds (a later line wins)."""
        self.db.executemany(
            "INSERT OR REPLACE INTO results (key, state, score, reply, truncated) VALUES (?, ?, ?, ?, ?)",
            ((key, JOURNAL, r.score, r.reply, r.truncated) for key, r in records),
        )
        self.commit()

    def plan(self, key: str, prompt: str) -> str:
        """Meet one of the input's request keys: "journal" (first met, answered by the journal),
        "new" (first met: to request) or "seen" (met before)."""
        if self.db.execute("INSERT OR IGNORE INTO results (key, state) VALUES (?, ?)", (key, PENDING)).rowcount:
            self.db.execute("INSERT INTO todo (key, prompt) VALUES (?, ?)", (key, prompt))
            return "new"
        if self.db.execute("UPDATE results SET state = ? WHERE key = ? AND state = ?", (RESOLVED, key, JOURNAL)).rowcount:
            return "journal"
        return "seen"

    def todo(self) -> Iterator[tuple[str, str]]:
        """(key, prompt) of each prompt to request, in input order, BATCH rows at a time."""
        last = 0
        while True:
            rows = self.db.execute(
                "SELECT seq, key, prompt FROM todo WHERE seq > ? ORDER BY seq LIMIT ?", (last, BATCH)
            ).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            for _, key, prompt in rows:
                yield key, prompt

    def finish(self, key: str, result: Result) -> None:
        self._finished.append((RESOLVED, result.score, result.reply, result.error, result.truncated, key))
        if len(self._finished) >= BATCH:
            self._write_finished()

    def _write_finished(self) -> None:
        self.db.executemany(
            "UPDATE results SET state = ?, score = ?, reply = ?, error = ?, truncated = ? WHERE key = ?",
            self._finished,
        )
        self._finished.clear()

    def result(self, key: str) -> Result | None:
        """The key's result; None when it has none (never requested: the input changed)."""
        row = self.db.execute(
            "SELECT score, reply, error, truncated FROM results WHERE key = ? AND state = ?", (key, RESOLVED)
        ).fetchone()
        if row is None:
            return None
        score, reply, error, truncated = row
        return Result(score, reply, error, None if truncated is None else bool(truncated))
