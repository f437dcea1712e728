"""The polling tail reader against real files: waiting, partial lines, corrupt lines, unknown
versions, dating by mtime until seen growing, truncation, replacement, incremental reads."""

from __future__ import annotations

import os

import orjson

import tui.follow
from testkit.runs import judge_summary
from tui.follow import JsonlFollower, RunFollower, Skipped


def line(i: int) -> bytes:
    return orjson.dumps({"v": 1, "type": "train", "time": float(i), "step": i}) + b"\n"


def follower(path, now=100.0) -> JsonlFollower:
    return JsonlFollower(path, clock=lambda: now)


def steps(chunk) -> list[int]:
    return [event["step"] for event in chunk.events]


def test_waits_for_a_file_that_does_not_exist_yet(tmp_path):
    path = tmp_path / "metrics.jsonl"
    tail = follower(path)
    chunk = tail.poll()
    assert chunk.events == [] and not chunk.reset and tail.last_growth is None
    path.write_bytes(line(1))
    assert steps(tail.poll()) == [1]
    assert tail.last_growth == path.stat().st_mtime  # a first look
    with open(path, "ab") as f:
        f.write(line(2))
    assert steps(tail.poll()) == [2]
    assert tail.last_growth == 100.0  # seen growing


def test_partial_last_line_waits_for_its_end(tmp_path):
    path = tmp_path / "metrics.jsonl"
    whole = line(2)
    path.write_bytes(line(1) + whole[:10])
    tail = follower(path)
    assert steps(tail.poll()) == [1]
    assert tail.skipped == Skipped()
    with open(path, "ab") as f:
        f.write(whole[10:])
    assert steps(tail.poll()) == [2]
    assert tail.skipped == Skipped()


def test_corrupt_lines_are_skipped_and_counted(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(line(1) + b"{not json\n" + b"[1, 2]\n" + b'{"no_type": 1}\n' + b"\n" + line(2))
    tail = follower(path)
    assert steps(tail.poll()) == [1, 2]
    assert tail.skipped == Skipped(corrupt=3, unknown_version=0)


def test_lines_of_an_unknown_version_are_counted_apart_never_read(tmp_path):
    path = tmp_path / "metrics.jsonl"
    later = [{"v": 2, "type": "train", "time": 3.0, "step": 3}, {"type": "train", "time": 4.0, "step": 4},
             {"v": True, "type": "train", "time": 5.0, "step": 5}, {"v": 1.0, "type": "train", "step": 6},
             {"v": "1", "type": "train", "step": 7}]
    path.write_bytes(line(1) + b"".join(orjson.dumps(event) + b"\n" for event in later) + line(2))
    tail = follower(path)
    assert steps(tail.poll()) == [1, 2]
    assert tail.skipped == Skipped(corrupt=0, unknown_version=5)


def test_reads_only_what_was_added(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(line(1) + line(2))
    tail = follower(path)
    assert steps(tail.poll()) == [1, 2]
    assert tail.offset == path.stat().st_size
    assert tail.poll().events == []
    with open(path, "ab") as f:
        f.write(line(3))
    assert steps(tail.poll()) == [3]


def test_a_file_is_dated_by_its_mtime_until_seen_growing(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(line(1))
    os.utime(path, (20.0, 20.0))  # written long before this reader looked
    now = [50.0]
    tail = JsonlFollower(path, clock=lambda: now[0])
    tail.poll()
    assert tail.last_growth == 20.0
    now[0] = 60.0
    with open(path, "ab") as f:
        f.write(line(2))
    tail.poll()
    assert tail.last_growth == 60.0
    now[0] = 80.0
    tail.poll()  # nothing new: the time it last grew stays
    assert tail.last_growth == 60.0


def test_an_empty_file_is_dated_too(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b"")
    os.utime(path, (20.0, 20.0))
    tail = follower(path)
    assert tail.poll().events == [] and tail.last_growth == 20.0


def test_truncated_file_is_reloaded(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(line(1) + line(2) + b"garbage\n")
    tail = follower(path)
    tail.poll()
    assert tail.skipped == Skipped(corrupt=1)
    with open(path, "r+b") as f:  # same inode, shorter
        f.truncate(0)
        f.write(line(7))
    chunk = tail.poll()
    assert chunk.reset and steps(chunk) == [7]
    assert tail.skipped == Skipped()


def test_replaced_file_is_reloaded(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(line(1))
    tail = follower(path)
    tail.poll()
    new = tmp_path / "new.jsonl"
    new.write_bytes(line(5) + line(6))  # longer than the old file: only the inode tells
    os.replace(new, path)
    chunk = tail.poll()
    assert chunk.reset and steps(chunk) == [5, 6]


def test_removed_file_resets_and_waits(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(line(1))
    tail = follower(path)
    tail.poll()
    path.unlink()
    assert tail.poll().reset
    path.write_bytes(line(9))
    assert steps(tail.poll()) == [9]


def test_a_large_file_is_read_in_slices(tmp_path, monkeypatch):
    monkeypatch.setattr(tui.follow, "READ_CHUNK_BYTES", 100)
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b"".join(line(i) for i in range(1, 21)))
    os.utime(path, (20.0, 20.0))
    tail = follower(path)
    seen, polls = [], 0
    while True:
        chunk = tail.poll()
        polls += 1
        seen += steps(chunk)
        if not chunk.more:
            break
    assert seen == list(range(1, 21))
    assert polls == -(-path.stat().st_size // 100)
    assert tail.skipped == Skipped()
    assert tail.last_growth == 20.0  # reading the backlog is not growth


def test_run_follower_finds_ranks_and_judge_summaries(tmp_path):
    (tmp_path / "ranks").mkdir()
    (tmp_path / "ranks" / "rank-0.jsonl").write_bytes(line(1))
    os.utime(tmp_path / "ranks" / "rank-0.jsonl", (5.0, 5.0))
    (tmp_path / "ranks" / "rank-x.jsonl").write_bytes(line(1))  # not a rank file
    (tmp_path / "a.summary.json").write_bytes(orjson.dumps(judge_summary()))
    (tmp_path / "b.summary.json").write_bytes(b"{broken")
    (tmp_path / "evals").mkdir()
    (tmp_path / "evals" / "step-10.scored.summary.json").write_bytes(orjson.dumps(judge_summary(mean=40.0)))
    (tmp_path / "evals" / "step-20.json").write_bytes(b"[]")  # responses, not a summary
    run = RunFollower(tmp_path, clock=lambda: 7.0)
    poll = run.poll()
    assert list(poll.ranks) == [0] and steps(poll.ranks[0]) == [1] and poll.heard == {0: 5.0}
    assert sorted(poll.judge) == ["a.summary.json", "b.summary.json", "evals/step-10.scored.summary.json"]
    assert poll.judge["a.summary.json"]["keys"]["model_response"]["mean"] == 51.75
    assert poll.judge["evals/step-10.scored.summary.json"]["keys"]["model_response"]["mean"] == 40.0
    assert poll.judge["b.summary.json"].startswith("unreadable")
    assert run.poll().judge is None  # unchanged: not re-read
    (tmp_path / "ranks" / "rank-1.jsonl").write_bytes(line(3))
    poll = run.poll()
    assert list(poll.ranks) == [0, 1] and steps(poll.ranks[1]) == [3] and poll.ranks[0].events == []
    (tmp_path / "evals" / "step-20.scored.summary.json").write_bytes(orjson.dumps({**judge_summary(), "v": 2}))
    judge = run.poll().judge
    assert judge["evals/step-20.scored.summary.json"] == "judge summary schema v2, this dashboard reads v1"
    assert judge["evals/step-10.scored.summary.json"]["keys"]["model_response"]["mean"] == 40.0
