"""Ranks agreeing outside collectives, through the process group's key-value store.

A collective waits for every rank for at most --dist-timeout; what one rank does alone for
minutes (rank 0 converting a checkpoint or writing gpt2-xl's model files) or what ranks do at
their own pace (generating test responses) must not trip it. Here the waiting ranks poll the
store instead, in a `wait_<phase>` heartbeat phase, with a limit of their own (an hour), and learn
at once if rank 0, which hosts the store, is gone. The same store carries a stop request from the
rank that got the signal to all the others within one poll, and hands out work from a shared
counter. Keys are unique within an attempt (the store lives as long as its process group).
"""

from __future__ import annotations

import pickle
import time

from trainer.training import distributed
from trainer.training.loop import StopRequested

ALONE_LIMIT_S = 3600.0  # how long ranks wait for another rank's solo work
POLL_S = 0.1
STOP_KEY = "stop"


class RankGone(RuntimeError):
    """The store (rank 0's process) stopped answering: rank 0 died."""


class Coordinator:
    """`namespace` keeps the keys of two coordinators of one attempt apart. Without a heartbeat
    (before the run directory is known) no phase is shown."""

    def __init__(self, dist_info, stop, heartbeat=None, namespace: str = "run"):
        self.dist = dist_info
        self.stop = stop  # trainer.lifecycle.signals.StopSignals: this rank's own signals
        self.heartbeat = heartbeat
        self.namespace = namespace
        self.store = distributed.store()
        self._calls = 0  # run_alone calls so far: the same sequence on every rank
        self._stop_published = False

    def _show(self, phase: str | None) -> str | None:
        """Set the heartbeat's phase (when there is one and a phase is given); the previous one."""
        if self.heartbeat is None or phase is None:
            return None
        previous = self.heartbeat.phase
        self.heartbeat.phase = phase
        return previous

    def _ask(self, doing: str, fn, *args):
        try:
            return fn(*args)
        except RuntimeError as e:  # the store's client: connection refused, reset, timed out
            raise RankGone(f"rank 0 died while {doing} ({' '.join(str(e).split())[:120]})") from None

    # ---- stopping ----------------------------------------------------------------------------

    def stop_requested(self) -> bool:
        """Whether any rank was asked to stop; a signal on this rank is published to the others."""
        if self.stop.requested is not None and not self._stop_published:
            self._ask("publishing a stop", self.store.set, STOP_KEY, b"1")
            self._stop_published = True
        return self.stop.requested is not None or self._ask("checking for a stop", self.store.check, [STOP_KEY])

    def check_stop(self) -> None:
        """Raise StopRequested when any rank was asked to stop (call between units of work)."""
        if self.stop_requested():
            raise StopRequested()

    # ---- rank 0 alone ------------------------------------------------------------------------

    def run_alone(self, phase: str | None, fn, *args, per_node: bool = False):
        """fn(*args) on rank 0 (heartbeat phase `phase`); every rank gets its result. The others
        wait outside any collective (phase `wait_<phase>`). fn's ValueError or RuntimeError is
        raised on every rank as a ValueError; a stop during fn (StopRequested) on every rank.
        per_node: local rank 0 of each node runs fn, and its node's ranks get its result."""
        self._calls += 1
        key = f"{self.namespace}/alone/{self._calls}"
        leader = 0
        if per_node:  # ranks are numbered node by node: a node is named by its first rank
            leader = self.dist.rank - self.dist.local_rank
            key += f"/node-{leader}"
        if self.dist.rank == leader:
            try:
                outcome = self._outcome(phase, fn, *args)
            except BaseException as e:  # a bug or Ctrl-C twice: the others learn it, then rank 0 raises it
                self._ask("sharing its failure", self.store.set, key,
                          pickle.dumps(("error", f"rank {leader} failed: {' '.join(f'{type(e).__name__}: {e}'.split())}")))
                raise
            self._ask("sharing its result", self.store.set, key, pickle.dumps(outcome))
        else:
            outcome = pickle.loads(self._wait_for(key, phase, leader))
        kind, value = outcome
        if kind == "stopped":
            raise StopRequested()
        if kind == "error":
            raise ValueError(value)
        return value

    def _outcome(self, phase: str | None, fn, *args) -> tuple[str, object]:
        previous = self._show(phase)
        try:
            return "ok", fn(*args)
        except StopRequested:
            return "stopped", None
        except (ValueError, RuntimeError) as e:
            return "error", str(e)
        finally:
            self._show(previous)

    def _wait_for(self, key: str, phase: str | None, leader: int) -> bytes:
        doing = phase or "deciding for all ranks"
        previous = self._show(phase and f"wait_{phase}")
        deadline = time.monotonic() + ALONE_LIMIT_S
        try:
            while not self._ask(doing, self.store.check, [key]):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"waited {ALONE_LIMIT_S:.0f} s for rank {leader} to finish {doing}")
                self.stop_requested()  # publish a signal this rank got, so that the leader stops too
                time.sleep(POLL_S)
            return self._ask(doing, self.store.get, key)
        finally:
            self._show(previous)

    # ---- every rank at its own pace ------------------------------------------------------------

    def take(self, name: str) -> int:
        """The next number of the counter `name` (from 0): each number goes to exactly one rank."""
        return self._ask(f"handing out {name}", self.store.add, f"{self.namespace}/counter/{name}", 1) - 1

    def add(self, name: str, amount: int) -> int:
        """Add to the total `name` of all ranks; the new total."""
        return self._ask(f"counting {name}", self.store.add, f"{self.namespace}/total/{name}", amount)

    def wait_for_all(self, name: str, phase: str) -> None:
        """Every rank arrives here (phase `wait_<phase>` while others have not), stops included:
        a stop requested meanwhile raises StopRequested once all have arrived or stopped."""
        key = f"{self.namespace}/arrived/{name}"
        arrived = self._ask(f"waiting for {phase}", self.store.add, key, 1)
        previous = self._show(f"wait_{phase}")
        deadline = time.monotonic() + ALONE_LIMIT_S
        try:
            while arrived < self.dist.world_size:
                if self.stop_requested():
                    raise StopRequested()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"waited {ALONE_LIMIT_S:.0f} s for the other ranks to finish {phase}")
                time.sleep(POLL_S)
                arrived = self._ask(f"waiting for {phase}", self.store.add, key, 0)
        finally:
            self._show(previous)
