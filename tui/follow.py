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
from dataclasses import dataclass
from operator import methodcaller
from pathlib import Path
from typing import Callable

import orjson

# Read at most this much per poll, so that opening a large file feeds the state in slices
# (bounded memory, and the screen shows progress) instead of one huge read.
READ_CHUNK_BYTES = 4 * 1024 * 1024
GET_TYPE = methodcaller("get", "type")


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
    """Tail of one JSONL file: offset, identity, the partial last line and a corrupt-line count.

    `last_growth` is when the file last grew, by the reader's clock (`clock`), because the
    writers' clocks may differ from ours.
    """

    path: Path
    clock: Callable[[], float]
    offset: int = 0
    identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the file being followed
    partial: bytes = b""  # a last line without its "\n" yet: wait for the rest
    corrupt_lines: int = 0
    last_growth: float | None = None

    def poll(self) -> Chunk:
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            # Not written yet (wait), or removed: a later file under this name is a new file.
            return Chunk(events=[], reset=self._forget() if self.identity else False)
        with f:
            stat = os.fstat(f.fileno())
            reset = False
            identity = (stat.st_dev, stat.st_ino)
            if self.identity is not None and (identity != self.identity or stat.st_size < self.offset):
                reset = self._forget()
            self.identity = identity
            if stat.st_size == self.offset:
                return Chunk(events=[], reset=reset)
            f.seek(self.offset)
            data = f.read(READ_CHUNK_BYTES)
        self.offset += len(data)
        self.last_growth = self.clock()
        return Chunk(events=self._parse(data), reset=reset, more=self.offset < stat.st_size)

    def _forget(self) -> bool:
        self.offset = 0
        self.identity = None
        self.partial = b""
        self.corrupt_lines = 0
        return True

    def _parse(self, data: bytes) -> list[dict]:
        data = self.partial + data
        last_newline = data.rfind(b"\n")
        self.partial = data[last_newline + 1 :]
        events, corrupt = parse_lines(data[: last_newline + 1])
        self.corrupt_lines += corrupt
        return events


def parse_lines(data: bytes) -> tuple[list[dict], int]:
    """The events in complete, "\n"-terminated lines, and how many lines were corrupt (not
    JSON, or not an object with a string `type`)."""
    lines = list(filter(None, data.split(b"\n")))
    # Fast path, all in C: every line parses, and is an object with a string `type`.
    try:
        events = list(map(orjson.loads, lines))
    except orjson.JSONDecodeError:
        pass
    else:
        if {dict}.issuperset(map(type, events)) and {str}.issuperset(map(type, map(GET_TYPE, events))):
            return events, 0
    events, corrupt = [], 0
    for line in lines:
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            corrupt += 1
            continue
        if isinstance(event, dict) and isinstance(event.get("type"), str):
            events.append(event)
        else:
            corrupt += 1
    return events, corrupt


@dataclass
class RunPoll:
    """What one poll of a run directory found."""

    metrics: Chunk
    metrics_growth: float | None  # dashboard clock: when metrics.jsonl last grew
    ranks: dict[int, Chunk]  # global rank -> what its heartbeat file gained
    heard: dict[int, float | None]  # global rank -> when its heartbeat file last grew
    metrics_corrupt: int
    rank_corrupt: dict[int, int]
    judge: dict[str, dict | str] | None  # judge summaries (or why unreadable); None: unchanged
    more: bool  # a file has more to read right away


class RunFollower:
    """Polls the files of one run directory (docs/metrics.md): `metrics.jsonl`,
    `ranks/rank-<N>.jsonl` and any `*.summary.json` (docs/judge.md)."""

    def __init__(self, run_dir: str | Path, clock: Callable[[], float]):
        self.run_dir = Path(run_dir)
        self.clock = clock
        self.metrics = JsonlFollower(self.run_dir / "metrics.jsonl", clock)
        self.ranks: dict[int, JsonlFollower] = {}
        self.judge_seen: dict[str, tuple[int, int]] = {}  # name -> (mtime_ns, size)

    def poll(self) -> RunPoll:
        metrics = self.metrics.poll()
        self._discover_ranks()
        ranks = {rank: follower.poll() for rank, follower in self.ranks.items()}
        return RunPoll(
            metrics=metrics,
            metrics_growth=self.metrics.last_growth,
            ranks=ranks,
            heard={rank: follower.last_growth for rank, follower in self.ranks.items()},
            metrics_corrupt=self.metrics.corrupt_lines,
            rank_corrupt={rank: follower.corrupt_lines for rank, follower in self.ranks.items()},
            judge=self._poll_judge(),
            more=metrics.more or any(chunk.more for chunk in ranks.values()),
        )

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
        """Re-read the judge summaries when one appeared, changed or went (they are small and
        written atomically, docs/judge.md)."""
        seen = {}
        for path in sorted(self.run_dir.glob("*.summary.json")):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            seen[path.name] = (stat.st_mtime_ns, stat.st_size)
        if seen == self.judge_seen:
            return None
        self.judge_seen = seen
        summaries: dict[str, dict | str] = {}
        for name in seen:
            try:
                summary = orjson.loads((self.run_dir / name).read_bytes())
            except (OSError, orjson.JSONDecodeError) as e:
                summaries[name] = f"unreadable: {e}"
                continue
            if not isinstance(summary, dict) or summary.get("type") != "judge_summary":
                summaries[name] = "not a judge summary (type is not 'judge_summary')"
            elif summary.get("v") != 1:
                summaries[name] = f"judge summary schema v{summary.get('v')}, this dashboard reads v1"
            else:
                summaries[name] = summary
        return summaries
