"""Memory accounting: one formula shared by the planner and the agents.

Why this module exists: an agent holds every deployed stage in its own
onnxruntime session, so it charges its device the *sum* of its stages'
`memory_bytes` and admits a new stage only while that sum stays within its
budget (`admits`, which the agent's deploy handler calls). Exit cuts split one
device's segment of a pipeline into several consecutive stages, and each of
them holds its own weights *and* its own peak of live activations. Counting the
segment's weights plus one peak (as the planner first did) undercounts by the
smaller peaks, so a plan accepted near a budget was refused at deploy time.

Here a segment [p, q) on one device costs the sum of `stage_bytes` over the
stages it is split into (`SegmentMemory.bytes`), the same integers the plan's
`Stage.memory_bytes` carry and the agent adds up. So a plan the planner accepts
is never refused by an agent that holds nothing else.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable, Sequence
from typing import Protocol

import numpy as np


class _StageLike(Protocol):
    @property
    def device(self) -> str: ...

    @property
    def memory_bytes(self) -> int: ...


def admits(held_bytes: int, need_bytes: int, budget: float | None) -> bool:
    """The agent's admission rule: a deployment of `need_bytes` may load beside
    `held_bytes` already held iff the total stays within `budget` (None: unlimited)."""
    return budget is None or held_bytes + need_bytes <= budget


def device_bytes(stages: Iterable[_StageLike]) -> dict[str, int]:
    """Bytes each device is charged for a plan's stages: the sum over its stages."""
    totals: dict[str, int] = {}
    for stage in stages:
        totals[stage.device] = totals.get(stage.device, 0) + int(stage.memory_bytes)
    return totals


def _range_max_table(values: np.ndarray) -> list[np.ndarray]:
    table = [values]
    width = 1
    while width * 2 <= len(values):
        prev = table[-1]
        table.append(np.maximum(prev[: len(prev) - width], prev[width:]))
        width *= 2
    return table


class SegmentMemory:
    """Bytes of stages and of one device's segments over a node order.

    `params`: prefix sums of parameter bytes (N + 1 entries); `live`: live
    activation bytes at each node (N entries), see `pipeline.stage_memory`;
    `cuts`: positions where a stage ends even inside one device's segment (the
    exit heads' cuts).
    """

    def __init__(self, params: np.ndarray, live: np.ndarray, cuts: Iterable[int] = ()) -> None:
        self.params = np.asarray(params, dtype=np.float64)
        self.live = np.asarray(live, dtype=np.float64)
        n = len(self.live)
        self.cuts: list[int] = sorted({int(c) for c in cuts if 0 < c < n})
        self._table = _range_max_table(self.live) if n else []

    def _peak(self, start: int, stop: int) -> float:
        k = math.floor(math.log2(stop - start))
        level = self._table[k]
        return float(max(level[start], level[stop - (1 << k)]))

    def stage_bytes(self, start: int, stop: int) -> int:
        """One stage [start, stop): its weights plus its peak live activations."""
        if stop <= start:
            return 0
        return int(self.params[stop] - self.params[start] + self._peak(start, stop))

    def pieces(self, start: int, stop: int) -> list[tuple[int, int]]:
        """The stages [start, stop) is split into at the cuts strictly inside it."""
        inside = self.cuts[bisect.bisect_right(self.cuts, start):
                           bisect.bisect_left(self.cuts, stop)]
        bounds = [start, *inside, stop]
        return list(itertools.pairwise(bounds))

    def bytes(self, start: int, stop: int) -> int:
        """What an agent is charged for running [start, stop) as its consecutive stages."""
        return sum(self.stage_bytes(a, b) for a, b in self.pieces(start, stop))

    def lowest_starts(self, budget: float, end: int | None = None) -> np.ndarray:
        """For every end q in 0..end, the smallest start p with bytes(p, q) ≤ budget (q if none).

        Growing a segment at either end never lowers its bytes (weights only add,
        a peak only rises, a cut crossed adds a stage), so the feasible starts of
        each q form an interval ending at q - 1 and the smallest one never moves
        left as q grows: one pass with two pointers.
        """
        n = len(self.live) if end is None else end
        lo = np.zeros(n + 1, dtype=np.int64)
        p = 0
        for q in range(1, n + 1):
            while p < q and self.bytes(p, q) > budget:
                p += 1
            lo[q] = p
        return lo


def overcommitted(stages: Sequence[_StageLike],
                  budgets: dict[str, float | None]) -> dict[str, int]:
    """Devices whose summed stage bytes exceed their budget, with those sums (empty: fits)."""
    return {
        device: total for device, total in device_bytes(stages).items()
        if not admits(0, total, budgets.get(device))
    }


__all__ = ["SegmentMemory", "admits", "device_bytes", "overcommitted"]
