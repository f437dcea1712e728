"""A journal of generated responses: what an interrupted generation keeps, so that it resumes.

One JSON object per line. The first line says what the responses answer (`identity`: the weights,
the generation settings, the input; whatever the writer must not mix); each further line is one
finished entry, keyed by its index in the input:

    {"v": 1, "type": "journal", "identity": {"settings": {...}, "weights_sha256": "...", ...}}
    {"index": 17, "response": "The capital of France is Paris."}

A journal whose identity differs from the reader's is not read: `JournalMismatch` names what
changed. A last line without its newline is a write cut short by a crash: it is dropped. Used by
`python -m trainer.generate --file` and by a training run's test responses (one journal per rank).
"""

from __future__ import annotations

from pathlib import Path

import orjson

from instruct import EntryError, atomic_write_bytes

VERSION = 1


class JournalMismatch(ValueError):
    """The journal answers something else; the message names what changed."""


def differences(then: dict, now: dict) -> list[str]:
    """What differs between two identities, by name: a setting with both of its values (`seed
    (123, now 5)`), a digest by its name alone (`weights`)."""
    changed = []
    for key in sorted(then.keys() | now.keys()):
        old, new = then.get(key), now.get(key)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            changed += [f"{name} ({orjson.dumps(old.get(name)).decode()}, now {orjson.dumps(new.get(name)).decode()})"
                        for name in sorted(old.keys() | new.keys()) if old.get(name) != new.get(name)]
        else:
            changed.append(key)
    return changed


class ResponseJournal:
    def __init__(self, path: str | Path, identity: dict):
        self.path = Path(path)
        self.identity = identity
        self._file = None

    # ---- reading ------------------------------------------------------------------------------

    def read(self, n_entries: int) -> dict[int, str]:
        """The responses already generated, {entry index: response}; {} when there is no journal."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        lines = raw.split(b"\n")
        torn = lines.pop()  # b"" when the file ends with a newline
        if not lines:
            return {}
        self._check_header(lines[0])
        finished: dict[int, str] = {}
        for line_number, line in enumerate(lines[1:], start=2):
            index, response = self._record(line, line_number, n_entries)
            finished[index] = response
        if torn:
            atomic_write_bytes(self.path, b"".join(line + b"\n" for line in lines))
        return finished

    def _check_header(self, line: bytes) -> None:
        try:
            header = orjson.loads(line)
            found = header["identity"] if header.get("type") == "journal" else None
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            found = None
        if not isinstance(found, dict):
            raise JournalMismatch(f"{self.path}: written by another version of this tool (no identity line)")
        changed = differences(found, self.identity)
        if changed:
            raise JournalMismatch(f"{self.path}: the journal's {', '.join(changed)} differ from this run's")

    def _record(self, line: bytes, line_number: int, n_entries: int) -> tuple[int, str]:
        try:
            record = orjson.loads(line)
            index, response = record["index"], record["response"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise EntryError(f"{self.path}: line {line_number} is not a journal record; delete the file to start over")
        if not (isinstance(index, int) and 0 <= index < n_entries and isinstance(response, str)):
            raise EntryError(
                f"{self.path}: line {line_number}: entry {index!r} does not belong to an input of "
                f"{n_entries} entries; delete the file to start over"
            )
        return index, response

    # ---- writing ------------------------------------------------------------------------------

    def __enter__(self) -> "ResponseJournal":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._file = open(self.path, "ab")
        if new:
            self._file.write(orjson.dumps({"v": VERSION, "type": "journal", "identity": self.identity}) + b"\n")
            self._file.flush()
        return self

    def append(self, indices: list[int], responses: list[str]) -> None:
        """One batch of finished entries, flushed at once (a crash keeps every batch before it)."""
        self._file.write(b"".join(
            orjson.dumps({"index": index, "response": response}) + b"\n" for index, response in zip(indices, responses)
        ))
        self._file.flush()

    def __exit__(self, *exc) -> None:
        self._file.close()
        self._file = None
