"""Faults injected by the fault-tolerance tests, through the environment only.

GPT2_INSTRUCT_TEST_NAN="rank:epoch:batch": that rank's loss on that global batch (index in the
epoch, from 0) is NaN. GPT2_INSTRUCT_TEST_STALL="rank:step:seconds": that rank sleeps before step
`step`, outside any collective (a hung rank). GPT2_INSTRUCT_TEST_HOLD="rank:phase:seconds": that
rank stays that long at the start of a final phase (`final_eval`, `generate`, `export`) or of the
checkpoint conversion (`convert`), or after the first chunk of a token cache it builds
(`tokenize`), or until a stop, as slow work there would. Unset, they cost a
comparison each.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable


HOLD_PHASES = ("final_eval", "generate", "export", "convert", "tokenize")


@dataclass
class TestFaults:
    nan_at: tuple[int, int, int] | None = None
    stall: tuple[int, int, float] | None = None
    hold: tuple[int, str, float] | None = None

    @classmethod
    def from_environment(cls) -> "TestFaults":
        nan = os.environ.get("GPT2_INSTRUCT_TEST_NAN")
        stall = os.environ.get("GPT2_INSTRUCT_TEST_STALL")
        hold = os.environ.get("GPT2_INSTRUCT_TEST_HOLD")
        faults = cls(
            nan_at=tuple(int(x) for x in nan.split(":")) if nan else None,
            stall=(lambda r, s, t: (int(r), int(s), float(t)))(*stall.split(":")) if stall else None,
            hold=(lambda r, p, t: (int(r), p, float(t)))(*hold.split(":")) if hold else None,
        )
        if faults.hold and faults.hold[1] not in HOLD_PHASES:
            raise ValueError(f"GPT2_INSTRUCT_TEST_HOLD: phase {faults.hold[1]!r} is not one of {HOLD_PHASES}")
        return faults

    def maybe_hold(self, rank: int, phase: str, stopped: Callable[[], bool]) -> None:
        """Stay in `phase` as GPT2_INSTRUCT_TEST_HOLD says, polling `stopped` (a stop ends it)."""
        if not (self.hold and self.hold[:2] == (rank, phase)):
            return
        deadline = time.monotonic() + self.hold[2]
        self.hold = None
        while time.monotonic() < deadline and not stopped():
            time.sleep(0.1)

    def maybe_stall(self, rank: int, step: int) -> None:
        if self.stall and self.stall[:2] == (rank, step):
            time.sleep(self.stall[2])
            self.stall = None
