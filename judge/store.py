"""The run's working index, on disk: the input's prompts and their results, so that memory stays
flat however many entries the input holds.

A SQLite file beside the output (`OUT.work.sqlite`), built at the start of each run from the
input and the journal and deleted at its end; one left behind by a killed run is replaced by
the next. It is an index, not a record: the journal is (durability settings are off here, and
a crash loses nothing the journal holds). Rows go in and come out in batches and the joins run
inside SQLite, so a million entries cost seconds, not minutes, of Python:

- `journal`: the journal's results, by request key;
- `planned`: each response to score, in input order, with its request key and prompt;
- `todo`: the first response of each distinct key the journal does not answer, in input order;
- `answers`: this run's results, appended as they arrive and indexed by key before the output.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Iterable, Iterator

from judge.journal import Result

BATCH = 512  # rows written, or read, at a time
CACHE_KIB = 2 * 1024  # SQLite's page cache (resident memory); the OS caches the rest of the file
SCHEMA = (
    "CREATE TABLE journal (key TEXT PRIMARY KEY, score INTEGER, reply TEXT, truncated INTEGER) WITHOUT ROWID",
    "CREATE TABLE planned (seq INTEGER PRIMARY KEY, key TEXT NOT NULL, prompt TEXT NOT NULL)",
    "CREATE TABLE answers (key TEXT NOT NULL, score INTEGER, reply TEXT, error TEXT, truncated INTEGER)",
)


def _truncated(value: int | None) -> bool | None:
    return None if value is None else bool(value)


class Store:
    def __init__(self, path: Path):
        self.path = path
        path.unlink(missing_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None)  # transactions are explicit
        for pragma in ("journal_mode=OFF", "synchronous=OFF", f"cache_size=-{CACHE_KIB}", "temp_store=FILE"):
            self.db.execute(f"PRAGMA {pragma}")
        for statement in SCHEMA:
            self.db.execute(statement)
        self.db.execute("BEGIN")  # one transaction per phase: SQLite spills to the file as its cache fills
        self._answers: list[tuple] = []  # results not yet written

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.db.close()
        self.path.unlink(missing_ok=True)

    def _commit(self) -> None:
        self.db.execute("COMMIT")
        self.db.execute("BEGIN")

    def add_journal(self, records: Iterable[tuple[str, Result]]) -> None:
        """The journal's results (a later line for the same key wins)."""
        self.db.executemany(
            "INSERT OR REPLACE INTO journal VALUES (?, ?, ?, ?)",
            ((key, r.score, r.reply, r.truncated) for key, r in records),
        )
        self._commit()

    def add_planned(self, rows: Iterable[tuple[str, str]]) -> None:
        """(request key, prompt) of each response to score, in input order."""
        self.db.executemany("INSERT INTO planned (key, prompt) VALUES (?, ?)", rows)
        self._commit()

    def make_todo(self) -> tuple[int, int]:
        """List the prompts to request; return (distinct prompts, of them answered by the journal)."""
        self.db.execute(
            "CREATE TABLE todo AS SELECT min(seq) AS seq FROM planned"
            " WHERE key NOT IN (SELECT key FROM journal) GROUP BY key ORDER BY 1"
        )
        (from_journal,) = self.db.execute(
            "SELECT count(DISTINCT key) FROM planned WHERE key IN (SELECT key FROM journal)"
        ).fetchone()
        (requests,) = self.db.execute("SELECT count(*) FROM todo").fetchone()
        self._commit()
        return requests + from_journal, from_journal

    def todo(self) -> Iterator[tuple[str, str]]:
        """(key, prompt) of each prompt to request, in input order, BATCH rows at a time."""
        last = 0
        while rows := self.db.execute(
            "SELECT todo.rowid, key, prompt FROM todo JOIN planned USING (seq) WHERE todo.rowid > ?"
            " ORDER BY todo.rowid LIMIT ?", (last, BATCH)
        ).fetchall():
            last = rows[-1][0]
            for _, key, prompt in rows:
                yield key, prompt

    def finish(self, key: str, result: Result) -> None:
        self._answers.append((key, result.score, result.reply, result.error, result.truncated))
        if len(self._answers) >= BATCH:
            self._write_answers()

    def _write_answers(self) -> None:
        self.db.executemany("INSERT INTO answers VALUES (?, ?, ?, ?, ?)", self._answers)
        self._answers.clear()

    def results(self) -> Iterator[Result | None]:
        """The result of each planned response, in input order (None: it has none, which means
        the input changed while it was scored)."""
        self._write_answers()
        self.db.execute("CREATE UNIQUE INDEX answers_key ON answers (key)")  # each key is answered once
        self._commit()
        rows = self.db.execute(
            "SELECT a.score, a.reply, a.error, a.truncated, j.key IS NOT NULL, j.score, j.reply, j.truncated"
            " FROM planned p LEFT JOIN answers a ON a.key = p.key LEFT JOIN journal j ON j.key = p.key"
            " ORDER BY p.seq"
        )
        while batch := rows.fetchmany(BATCH):
            for score, reply, error, truncated, journaled, j_score, j_reply, j_truncated in batch:
                if journaled:
                    yield Result(j_score, j_reply, truncated=_truncated(j_truncated))
                elif score is not None or reply is not None or error is not None:
                    yield Result(score, reply, error, _truncated(truncated))
                else:
                    yield None
