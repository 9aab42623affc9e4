"""Exact dynamic programming over cut points and ordered device subsets.

The problem: split positions 0..N of a node order into contiguous segments, give
each segment to a distinct device (any subset, in any order), minimising either the
sum of segment compute and hop transfer times (latency) or the largest of them
(throughput: the bottleneck stage of a stream), subject to each device's memory.

Inputs are arrays so the solver stays independent of ONNX: the compute of device e
on [p, q) is ``A[e, q] - B[e, p]`` (prefix sums plus per-stage overheads), a hop
from d to e after position p costs ``X[d, e, p]``, and ``lo_mem[e, q]`` is the
smallest start p whose segment [p, q) fits e's memory (memory only grows with the
segment, so the feasible starts form an interval ending at q - 1). A segment's memory
is what the agent will charge: the sum over the stages it becomes (`partitioner.memory`).

Latency: f[S, d][q] = best time to finish positions [0, q) using device set S with
d last. f[S+e, e][q] = A[e, q] + min over p in [lo(q), q-1] of (f[S, d][p] + X[d, e, p]
- B[e, p]): a sliding-window minimum, answered for all q at once from a sparse
table (the minimum over the previous device d is taken first, so each (S, e) pair
costs one window). Time O(2^D · D · (D + log N) · N), memory O(2^D · D · N); D = 8
devices and N = 2,000 cuts take well under a second in numpy.

Throughput: bisection on the bottleneck T with a reachability check of the same
shape (O(2^D · D² · N) per round, ~25 rounds to a relative 1e-6 from the bracket
[fastest whole-model time / D, latency-optimal plan's bottleneck]), then the latency
DP restricted to stages ≤ T picks, among bottleneck-optimal plans, the fastest one.
So the bottleneck is optimal to a relative 1e-6 (exact for practical purposes).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

INF = math.inf
# Bisection stops when the bracket on the bottleneck is this tight (relative).
BISECTION_RTOL = 1e-6
BISECTION_MAX_ROUNDS = 60


@dataclass(frozen=True)
class Problem:
    """Arrays of one planning problem (see the module docstring); D devices, N positions."""

    A: np.ndarray  # (D, N+1)
    B: np.ndarray  # (D, N+1), nondecreasing in p
    X: np.ndarray  # (D, D, N+1)
    lo_mem: np.ndarray  # (D, N+1) int

    @property
    def devices(self) -> int:
        return int(self.A.shape[0])

    @property
    def positions(self) -> int:
        return int(self.A.shape[1] - 1)

    def segment(self, e: int, p: int, q: int) -> float:
        return float(self.A[e, q] - self.B[e, p])


Segment = tuple[int, int, int]  # (device, start, end)


def _lo(problem: Problem, e: int, cap: float) -> np.ndarray:
    """Smallest start p for every end q: fits memory and (with a cap) compute ≤ cap."""
    lo: np.ndarray = problem.lo_mem[e]
    if math.isfinite(cap):
        by_cap = np.searchsorted(problem.B[e], problem.A[e] - cap, side="left")
        lo = np.maximum(lo, by_cap)
    return lo


@dataclass(frozen=True)
class _Window:
    """Precomputed sparse-table lookups for the windows [lo[q], q - 1] of one device.

    The windows depend only on the device (and cap), so the lookup indices are built
    once and every (S, d) transition into that device costs one table build and two
    gathers.
    """

    prefix_only: bool  # every window starts at 0: a running minimum suffices
    valid: np.ndarray
    level: np.ndarray
    left: np.ndarray
    right: np.ndarray
    levels: int

    @classmethod
    def build(cls, lo: np.ndarray) -> _Window:
        n1 = len(lo)
        hi = np.arange(n1) - 1
        valid = lo <= hi
        length = np.where(valid, hi - lo + 1, 1)
        level = np.floor(np.log2(length)).astype(np.int64)
        left = np.where(valid, lo, 0)
        right = np.where(valid, hi - (1 << level) + 1, 0)
        levels = int(level.max()) + 1 if n1 else 1
        prefix_only = bool(np.all(lo[valid] == 0))
        return cls(prefix_only, valid, level, left, right, levels)

    def minimum(self, h: np.ndarray) -> np.ndarray:
        """min(h[lo[q] .. q - 1]) for every q (inf for an empty window)."""
        out = np.full(len(h), INF)
        if self.prefix_only:
            running = np.minimum.accumulate(h)
            out[1:] = running[:-1]
            out[~self.valid] = INF
            return out
        table = np.full((self.levels, len(h)), INF)
        table[0] = h
        width = 1
        for k in range(1, self.levels):
            table[k, : len(h) - 2 * width + 1] = np.minimum(
                table[k - 1, : len(h) - 2 * width + 1], table[k - 1, width : len(h) - width + 1]
            )
            width *= 2
        result = np.minimum(table[self.level, self.left], table[self.level, self.right])
        return np.where(self.valid, result, INF)


def solve_latency(problem: Problem, cap: float = INF) -> tuple[float, list[Segment]]:
    """Minimum total time (compute + hops), stages and hops ≤ cap; ([], inf) if infeasible.

    `f[S]` is a (D, N + 1) array: row d holds f[S, d][q] (inf where unreachable). The
    minimum over the previous device d is taken before the window minimum (the min of
    window mins is the window min of the min), so each (S, e) pair costs one window.
    """
    n, d_count = problem.positions, problem.devices
    q_idx = np.arange(n + 1)
    los = [_lo(problem, e, cap) for e in range(d_count)]
    windows = [_Window.build(lo) for lo in los]
    hops = problem.X if not math.isfinite(cap) else np.where(cap >= problem.X, problem.X, INF)
    f: dict[int, np.ndarray] = {}
    for e in range(d_count):
        first = problem.A[e] - problem.B[e, 0]
        first = np.where((los[e] <= 0) & (q_idx >= 1), first, INF)
        if np.isfinite(first).any():
            table = np.full((d_count, n + 1), INF)
            table[e] = first
            f[1 << e] = table
    for mask in range(1, 1 << d_count):
        current = f.get(mask)
        if current is None:
            continue
        rows = [d for d in range(d_count) if mask >> d & 1 and np.isfinite(current[d]).any()]
        if not rows:
            continue
        for e in range(d_count):
            if mask >> e & 1:
                continue
            h = np.min(current[rows] + hops[rows, e], axis=0) - problem.B[e]
            h[n] = INF  # an empty last segment is not a stage
            best = windows[e].minimum(h) + problem.A[e]
            if not np.isfinite(best).any():
                continue
            key = mask | 1 << e
            if key not in f:
                f[key] = np.full((d_count, n + 1), INF)
            np.minimum(f[key][e], best, out=f[key][e])
    finals = [
        (float(table[d, n]), (mask, d))
        for mask, table in f.items()
        for d in range(d_count)
        if math.isfinite(table[d, n])
    ]
    if not finals:
        return INF, []
    value, best_key = min(finals)
    return value, _reconstruct(problem, f, best_key, los, hops)


def _reconstruct(
    problem: Problem,
    f: dict[int, np.ndarray],
    key: tuple[int, int],
    los: list[np.ndarray],
    hops: np.ndarray,
) -> list[Segment]:
    segments: list[Segment] = []
    mask, d = key
    q = problem.positions
    while True:
        if mask == 1 << d:
            segments.append((d, 0, q))
            break
        prev_mask = mask & ~(1 << d)
        lo = int(los[d][q])
        table = f.get(prev_mask)
        if table is None or lo > q - 1:  # pragma: no cover - f says a path exists
            raise RuntimeError("DP reconstruction lost its path")
        total = table[:, lo:q] + hops[:, d, lo:q] - problem.B[d, lo:q] + problem.A[d, q]
        prev, offset = np.unravel_index(int(np.argmin(total)), total.shape)
        if not math.isfinite(float(total[prev, offset])):  # pragma: no cover
            raise RuntimeError("DP reconstruction lost its path")
        p = lo + int(offset)
        segments.append((d, p, q))
        mask, d, q = prev_mask, int(prev), p
    segments.reverse()
    return segments


def feasible(problem: Problem, cap: float) -> bool:
    """Is there a plan whose every stage and hop takes ≤ cap (and fits memory)?

    Reachability over the same states as the latency DP: from the starts valid for
    any (S, d) — reached and with a hop d → e ≤ cap — device e reaches every q whose
    window [lo_e(q), q - 1] holds a valid start, i.e. the last valid start before q
    is ≥ lo_e(q). Vectorised over d and e, so each subset S costs a few array ops.
    """
    n, d_count = problem.positions, problem.devices
    q_idx = np.arange(n + 1)
    lo = np.stack([_lo(problem, e, cap) for e in range(d_count)])  # (D, N+1)
    nonempty = lo <= q_idx[None, :] - 1
    hop_ok = cap >= problem.X  # (D, D, N+1)
    reach: dict[int, np.ndarray] = {}
    for e in range(d_count):
        first = (lo[e] <= 0) & (q_idx >= 1)
        if first[n]:
            return True
        if first.any():
            table = np.zeros((d_count, n + 1), dtype=bool)
            table[e] = first
            reach[1 << e] = table
    for mask in range(1, 1 << d_count):
        current = reach.get(mask)
        if current is None:
            continue
        targets = [e for e in range(d_count) if not mask >> e & 1]
        if not targets:
            continue
        valid: np.ndarray = np.any(current[:, None, :] & hop_ok[:, targets, :], axis=0)  # (T, N+1)
        valid[:, n] = False
        last = np.maximum.accumulate(np.where(valid, q_idx[None, :], -1), axis=1)
        ok: np.ndarray = np.zeros(valid.shape, dtype=bool)
        ok[:, 1:] = last[:, :-1] >= lo[targets, 1:]
        ok &= nonempty[targets]
        if ok[:, n].any():
            return True
        for row, e in enumerate(targets):
            if not ok[row].any():
                continue
            key = mask | 1 << e
            if key not in reach:
                reach[key] = np.zeros((d_count, n + 1), dtype=bool)
            reach[key][e] |= ok[row]
    return False


def bottleneck(problem: Problem, segments: list[Segment]) -> float:
    """The largest stage or hop time of a plan."""
    worst = 0.0
    for i, (e, p, q) in enumerate(segments):
        worst = max(worst, problem.segment(e, p, q))
        if i + 1 < len(segments):
            worst = max(worst, float(problem.X[e, segments[i + 1][0], q]))
    return worst


def solve_throughput(problem: Problem) -> tuple[float, list[Segment]]:
    """Minimum bottleneck; ties broken by minimum latency. ([], inf) if infeasible."""
    _latency, segments = solve_latency(problem)
    if not segments:
        return INF, []
    hi = bottleneck(problem, segments)
    # each stage runs its share no faster than the fastest device runs everything,
    # so the bottleneck is at least (the fastest whole-model time) / (device count)
    lo = float(np.min(problem.A[:, -1] - problem.B[:, 0])) / problem.devices * (1 - 1e-9)
    rounds = 0
    while hi - lo > BISECTION_RTOL * hi and rounds < BISECTION_MAX_ROUNDS:
        mid = (lo + hi) / 2.0
        if feasible(problem, mid):
            hi = mid
        else:
            lo = mid
        rounds += 1
    _, best = solve_latency(problem, cap=hi * (1 + 1e-12))
    if not best:  # numerical edge: fall back to the unconstrained optimum
        best = segments
    log.debug("throughput bisection: %d rounds, bottleneck %.6g s", rounds, hi)
    return bottleneck(problem, best), best
