"""Follow a JSONL file that another process (possibly on another host) appends to.

Polling, not inotify: on a cluster the run directory lives on NFS, where inotify never hears of
writes made by other hosts. Each poll opens the file, reads from the last offset and closes it
again: NFS revalidates a file's attributes and cache on open (close-to-open consistency), so a
reopen is what makes other hosts' writes visible. The design follows toolong's polling watcher
(github.com/Textualize/toolong, `watcher.py`): remember the offset, notice truncation and
replacement from the size and the inode, and only ever read what was added.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from operator import methodcaller
from pathlib import Path
from typing import Callable

import orjson

# Read at most this much per poll, so that opening a large file feeds the state in slices
# (bounded memory, and the screen shows progress) instead of one huge read.
READ_CHUNK_BYTES = 4 * 1024 * 1024
METRICS_VERSION = 1  # the `v` of docs/metrics.md this reader knows
JUDGE_VERSION = 1  # the `v` of docs/judge.md's summaries this reader knows
GET_TYPE = methodcaller("get", "type")
GET_V = methodcaller("get", "v")


@dataclass(frozen=True)
class Skipped:
    """Lines read but not taken in: corrupt (not JSON, or not an object with a string `type`),
    or of a schema version this reader does not know (never read as another version)."""

    corrupt: int = 0
    unknown_version: int = 0

    def __add__(self, other: Skipped) -> Skipped:
        return Skipped(self.corrupt + other.corrupt, self.unknown_version + other.unknown_version)


@dataclass
class Chunk:
    """What one poll found: the new events, and whether the file was truncated or replaced
    (then `events` start from the beginning of the new file and the reader must forget the old
    ones)."""

    events: list[dict]
    reset: bool = False
    more: bool = False  # the read stopped at READ_CHUNK_BYTES: poll again at once


@dataclass
class JsonlFollower:
    """Tail of one JSONL file: offset, identity, the partial last line and the lines skipped.

    `last_growth` dates the file's last growth (docs/metrics.md, "Staleness"): by its
    modification time until this reader has seen it grow (a run that died hours ago is stale
    from the first look), then by the reader's clock (`clock`), because the writers' clocks and
    the file server's may differ from ours. Reading a large file's backlog slice after slice is
    not growth: only a size larger than the one last seen is.
    """

    path: Path
    clock: Callable[[], float]
    offset: int = 0
    identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the file being followed
    size: int = 0  # the file's size at the last look
    partial: bytes = b""  # a last line without its "\n" yet: wait for the rest
    skipped: Skipped = field(default_factory=Skipped)
    last_growth: float | None = None

    def poll(self) -> Chunk:
        try:
            f = open(self.path, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
            # Not written yet (wait), or removed: a later file under this name is a new file. A
            # directory or an unreadable file in its place is waited out the same way.
            return Chunk(events=[], reset=self._forget() if self.identity else False)
        with f:
            stat = os.fstat(f.fileno())
            reset = False
            identity = (stat.st_dev, stat.st_ino)
            if self.identity is not None and (identity != self.identity or stat.st_size < self.offset):
                reset = self._forget()
            if self.identity is None:  # a first look at this file
                self.last_growth = stat.st_mtime
            elif stat.st_size > self.size:
                self.last_growth = self.clock()
            self.identity, self.size = identity, stat.st_size
            if stat.st_size == self.offset:
                return Chunk(events=[], reset=reset)
            f.seek(self.offset)
            data = f.read(READ_CHUNK_BYTES)
        self.offset += len(data)
        return Chunk(events=self._parse(data), reset=reset, more=self.offset < stat.st_size)

    def _forget(self) -> bool:
        self.offset = self.size = 0
        self.identity = None
        self.partial = b""
        self.skipped = Skipped()
        self.last_growth = None
        return True

    def _parse(self, data: bytes) -> list[dict]:
        data = self.partial + data
        last_newline = data.rfind(b"\n")
        self.partial = data[last_newline + 1 :]
        events, skipped = parse_lines(data[: last_newline + 1])
        if skipped != Skipped():
            self.skipped += skipped
        return events


def parse_lines(data: bytes) -> tuple[list[dict], Skipped]:
    """The events of METRICS_VERSION in complete, "\n"-terminated lines, and the lines
    skipped."""
    lines = list(filter(None, data.split(b"\n")))
    # Fast path, all in C: every line parses, and is an object with a string `type` and `v` 1.
    try:
        events = list(map(orjson.loads, lines))
    except orjson.JSONDecodeError:
        pass
    else:
        if ({dict}.issuperset(map(type, events)) and {str}.issuperset(map(type, map(GET_TYPE, events)))
                and {METRICS_VERSION}.issuperset(map(GET_V, events))
                and {int}.issuperset(map(type, map(GET_V, events)))):  # `true` equals 1, too
            return events, Skipped()
    events, corrupt, unknown_version = [], 0, 0
    for line in lines:
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            corrupt += 1
            continue
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            corrupt += 1
        elif not is_version(event, METRICS_VERSION):
            unknown_version += 1
        else:
            events.append(event)
    return events, Skipped(corrupt, unknown_version)


def is_version(document: dict, version: int) -> bool:
    """`v` is exactly the integer `version` (a JSON true, 1.0 or "1" is not)."""
    v = document.get("v")
    return v.__class__ is int and v == version


@dataclass
class RunPoll:
    """What one poll of a run directory found."""

    metrics: Chunk
    last_news: float  # when the run last gave news (RunFollower.last_news)
    ranks: dict[int, Chunk]  # global rank -> what its heartbeat file gained
    heard: dict[int, float | None]  # global rank -> when its heartbeat file last grew
    metrics_skipped: Skipped
    rank_skipped: dict[int, Skipped]
    judge: dict[str, dict | str] | None  # judge summaries (or why unreadable); None: unchanged
    more: bool  # a file has more to read right away


# Judge summaries (docs/judge.md) placed in the run directory, and those of the judged
# evaluations under evals/ (docs/metrics.md); named by their path relative to the run directory.
SUMMARY_GLOBS = ("*.summary.json", "evals/*.summary.json")


class RunFollower:
    """Polls the files of one run directory (docs/metrics.md): `metrics.jsonl`,
    `ranks/rank-<N>.jsonl` and the judge summaries (SUMMARY_GLOBS)."""

    def __init__(self, run_dir: str | Path, clock: Callable[[], float]):
        self.run_dir = Path(run_dir)
        self.clock = clock
        self.metrics = JsonlFollower(self.run_dir / "metrics.jsonl", clock)
        self.ranks: dict[int, JsonlFollower] = {}
        self.first_look: float | None = None  # our clock at the first poll
        # name -> ((mtime_ns, size), what was read): a summary is re-read only when it changed.
        self.summaries: dict[str, tuple[tuple[int, int], dict | str]] = {}

    def poll(self) -> RunPoll:
        if self.first_look is None:
            self.first_look = self.clock()
        metrics = self.metrics.poll()
        self._discover_ranks()
        ranks = {rank: follower.poll() for rank, follower in self.ranks.items()}
        return RunPoll(
            metrics=metrics,
            last_news=self.last_news(),
            ranks=ranks,
            heard={rank: follower.last_growth for rank, follower in self.ranks.items()},
            metrics_skipped=self.metrics.skipped,
            rank_skipped={rank: follower.skipped for rank, follower in self.ranks.items()},
            judge=self._poll_judge(),
            more=metrics.more or any(chunk.more for chunk in ranks.values()),
        )

    def last_news(self) -> float:
        """When the run last gave news, for `stalled` (docs/metrics.md, "Staleness"): when
        metrics.jsonl last grew; before there is one (the trainer creates it with `run_start`),
        the newest date of config.json and the heartbeat files, which the planning writes; in a
        directory holding none of them, our first look at it."""
        if self.metrics.last_growth is not None:
            return self.metrics.last_growth
        dates = [follower.last_growth for follower in self.ranks.values() if follower.last_growth is not None]
        try:
            dates.append((self.run_dir / "config.json").stat().st_mtime)
        except OSError:  # not written yet
            pass
        return max(dates, default=self.first_look)

    def _discover_ranks(self) -> None:
        try:
            names = os.listdir(self.run_dir / "ranks")
        except (FileNotFoundError, NotADirectoryError):
            return
        for name in names:
            stem, dot, ext = name.partition(".")
            if ext != "jsonl" or not stem.startswith("rank-") or not stem[5:].isdigit():
                continue
            rank = int(stem[5:])
            if rank not in self.ranks:
                self.ranks[rank] = JsonlFollower(self.run_dir / "ranks" / name, self.clock)

    def _poll_judge(self) -> dict[str, dict | str] | None:
        """All the judge summaries when one appeared, changed or went, else None. They are
        small and written atomically (docs/judge.md); only the changed ones are read again."""
        seen: dict[str, tuple[int, int]] = {}
        for pattern in SUMMARY_GLOBS:
            for path in sorted(self.run_dir.glob(pattern)):
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    continue
                seen[path.relative_to(self.run_dir).as_posix()] = (stat.st_mtime_ns, stat.st_size)
        known = {name: key for name, (key, _) in self.summaries.items()}
        if seen == known:
            return None
        summaries = {}
        for name, key in seen.items():
            if known.get(name) == key:
                summaries[name] = self.summaries[name]
            else:
                summaries[name] = (key, read_judge_summary(self.run_dir / name))
        self.summaries = summaries
        return {name: summary for name, (_, summary) in self.summaries.items()}


def read_judge_summary(path: Path) -> dict | str:
    """A judge summary (docs/judge.md), or one line saying why it cannot be read."""
    try:
        summary = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as e:
        return f"unreadable: {e}"
    if not isinstance(summary, dict) or summary.get("type") != "judge_summary":
        return "not a judge summary (type is not 'judge_summary')"
    if not is_version(summary, JUDGE_VERSION):
        return f"judge summary schema v{summary.get('v')}, this dashboard reads v{JUDGE_VERSION}"
    return summary
