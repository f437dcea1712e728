"""A metric against step, downsampled so that memory stays bounded however long the run.

Points are kept in buckets of `stride` consecutive points (mean step, mean value, min value).
When `capacity` buckets are full, neighbouring buckets are merged pairwise and the stride
doubles, so a run of any length keeps between capacity/2 and capacity buckets spread evenly
over all its steps: a chart a few hundred cells wide loses nothing it could show, and a
1,000,000-step run costs the same memory and redraw time as a 1,000-step one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class Bucket:
    count: int
    step: float  # mean step of the points
    value: float  # mean value
    low: float  # smallest value (the best val loss survives downsampling)
    last_step: float  # largest step: what a resume truncates on


@dataclass
class Series:
    capacity: int = 1024
    stride: int = 1
    buckets: list[Bucket] = field(default_factory=list)
    last: float | None = None  # the latest value, exact whatever the downsampling
    # The bucket being filled (fewer than `stride` points), kept as plain sums.
    count: int = 0
    step_sum: float = 0.0
    value_sum: float = 0.0
    low: float = math.inf
    last_step: float = -math.inf

    def add(self, step: float, value: float) -> None:
        self.extend([step], [value])

    def extend(self, steps: list[float], values: list[float]) -> None:
        """Add points in step order. Whole slices go into the bucket being filled at once
        (sum, min and max run in C), so that reading a long run costs per bucket, not per point."""
        if not values:
            return
        i, n = 0, len(values)
        while i < n:
            take = min(self.stride - self.count, n - i)
            step_slice, value_slice = steps[i : i + take], values[i : i + take]
            self.count += take
            self.step_sum += sum(step_slice)
            self.value_sum += sum(value_slice)
            self.low = min(self.low, min(value_slice))
            self.last_step = max(self.last_step, max(step_slice))
            i += take
            if self.count >= self.stride:
                self.buckets.append(self.pending())
                self._clear_pending()
                if len(self.buckets) >= self.capacity:
                    self._halve()
        self.last = values[-1]

    def pending(self) -> Bucket | None:
        if not self.count:
            return None
        return Bucket(self.count, self.step_sum / self.count, self.value_sum / self.count,
                      self.low, self.last_step)

    def _clear_pending(self) -> None:
        self.count, self.step_sum, self.value_sum = 0, 0.0, 0.0
        self.low, self.last_step = math.inf, -math.inf

    def _halve(self) -> None:
        merged = []
        for a, b in zip(self.buckets[0::2], self.buckets[1::2]):
            n = a.count + b.count
            merged.append(
                Bucket(
                    n,
                    (a.step * a.count + b.step * b.count) / n,
                    (a.value * a.count + b.value * b.count) / n,
                    min(a.low, b.low),
                    max(a.last_step, b.last_step),
                )
            )
        if len(self.buckets) % 2:
            merged.append(self.buckets[-1])
        self.buckets = merged
        self.stride *= 2

    def drop_after(self, step: float) -> None:
        """Forget every point past `step` (a resumed attempt replays them). A bucket that mixes
        points on both sides goes whole: exact at full resolution, one bucket off when coarse."""
        while self.buckets and self.buckets[-1].last_step > step:
            self.buckets.pop()
        if self.count and self.last_step > step:
            self._clear_pending()
        points = self.points()
        self.last = points[-1].value if points else None

    def points(self) -> list[Bucket]:
        pending = self.pending()
        return self.buckets + ([pending] if pending is not None else [])

    def lowest(self) -> Bucket | None:
        points = self.points()
        return min(points, key=lambda b: b.low) if points else None
