"""The lost-rank rule (docs/fault-tolerance.md): a rank of the current attempt is lost when its
process is gone (same host) or its heartbeat file has not grown for LOST_AFTER_S by our clock."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import orjson
import psutil

from trainer.lifecycle.signals import LOST_AFTER_S, PeerWatch


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def beat(ranks_dir, rank: int, pid: int, host: str | None = None) -> None:
    ranks_dir.mkdir(exist_ok=True)
    record = {"v": 1, "type": "system", "rank": rank, "host": host or socket.gethostname(), "pid": pid}
    with open(ranks_dir / f"rank-{rank}.jsonl", "ab") as f:
        f.write(orjson.dumps(record) + b"\n")


def test_a_silent_heartbeat_is_lost_only_past_the_limit(tmp_path):
    ranks, clock = tmp_path / "ranks", Clock()
    for rank in (0, 1):
        beat(ranks, rank, os.getpid(), host="another-host")
    peers = PeerWatch(ranks, world_size=2, clock=clock)
    peers.update()
    clock.now += LOST_AFTER_S - 1  # NFS may show another host's appends late: not lost yet
    beat(ranks, 0, os.getpid(), host="another-host")
    assert peers.lost() == []
    clock.now += 2
    assert peers.lost() == [1]


def test_a_rank_on_this_host_whose_process_is_gone_is_lost_at_once(tmp_path):
    ranks = tmp_path / "ranks"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    beat(ranks, 0, os.getpid())
    beat(ranks, 1, gone.pid)
    assert PeerWatch(ranks, world_size=2, clock=Clock()).lost() == [1]


def test_ranks_of_an_earlier_attempt_on_more_ranks_are_no_ghosts(tmp_path):
    """Resumed on 1 rank after 2: rank 1's old heartbeat file (its process long gone) is ignored."""
    ranks = tmp_path / "ranks"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    beat(ranks, 0, os.getpid())
    beat(ranks, 1, gone.pid)
    clock = Clock()
    peers = PeerWatch(ranks, world_size=1, clock=clock)
    peers.update()
    clock.now += 10 * LOST_AFTER_S
    beat(ranks, 0, os.getpid())
    assert peers.lost() == []


def test_a_killed_rank_not_yet_reaped_is_lost(tmp_path):
    """Killed, a rank is a zombie until the launcher reaps it: its process is gone all the same."""
    ranks = tmp_path / "ranks"
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        while psutil.Process(zombie.pid).status() != psutil.STATUS_ZOMBIE:
            time.sleep(0.01)
        beat(ranks, 0, os.getpid())
        beat(ranks, 1, zombie.pid)
        assert PeerWatch(ranks, world_size=2, clock=Clock()).lost() == [1]
    finally:
        zombie.wait()
