"""The DP is exact: compared with brute force over every device order and cut set."""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pytest

from partitioner.dp import Problem, bottleneck, feasible, solve_latency, solve_throughput


def random_problem(rng: np.random.Generator, devices: int, n: int, tight: bool) -> Problem:
    work = rng.uniform(0.1, 2.0, n)
    speeds = rng.uniform(0.5, 3.0, devices)
    prefix = np.concatenate([[0.0], np.cumsum(work)])
    overhead = rng.uniform(0.0, 0.2, devices)
    a = prefix[None, :] / speeds[:, None] + overhead[:, None]
    b = prefix[None, :] / speeds[:, None]
    hops = rng.uniform(0.05, 1.5, (devices, devices, n + 1))
    params = np.concatenate([[0.0], np.cumsum(rng.uniform(1, 5, n))])
    budgets = (
        rng.uniform(params[-1] * 0.3, params[-1] * 0.8, devices)
        if tight
        else np.full(devices, 1e18)
    )
    lo = np.zeros((devices, n + 1), dtype=np.int64)
    for e in range(devices):
        for q in range(1, n + 1):
            p = 0
            while p < q and params[q] - params[p] > budgets[e]:
                p += 1
            lo[e, q] = p
    return Problem(a, b, hops, lo)


def brute_force(problem: Problem, objective: str) -> float:
    n, d = problem.positions, problem.devices
    best = math.inf
    for k in range(1, d + 1):
        for order in itertools.permutations(range(d), k):
            for cuts in itertools.combinations(range(1, n), k - 1):
                bounds = [0, *cuts, n]
                segs = [(order[i], bounds[i], bounds[i + 1]) for i in range(k)]
                if any(problem.lo_mem[e, q] > p for e, p, q in segs):
                    continue
                if objective == "latency":
                    value = sum(problem.segment(e, p, q) for e, p, q in segs) + sum(
                        problem.X[segs[i][0], segs[i + 1][0], segs[i][2]] for i in range(k - 1)
                    )
                else:
                    value = bottleneck(problem, segs)
                best = min(best, value)
    return best


@pytest.mark.parametrize("seed", range(12))
def test_latency_and_throughput_match_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    problem = random_problem(
        rng, devices=int(rng.integers(1, 5)), n=int(rng.integers(2, 8)), tight=seed % 2 == 1
    )
    for objective, solver in (("latency", solve_latency), ("throughput", solve_throughput)):
        expected = brute_force(problem, objective)
        value, segments = solver(problem)
        if math.isinf(expected):
            assert not segments
            continue
        assert value == pytest.approx(expected, rel=1e-6)
        # the returned segments really achieve it and are a valid plan
        assert segments[0][1] == 0 and segments[-1][2] == problem.positions
        assert len({e for e, _, _ in segments}) == len(segments)
        assert all(problem.lo_mem[e, q] <= p < q for e, p, q in segments)
        if objective == "throughput":
            assert bottleneck(problem, segments) == pytest.approx(expected, rel=1e-6)


def test_feasibility_is_monotone_in_the_cap() -> None:
    problem = random_problem(np.random.default_rng(7), devices=3, n=20, tight=True)
    value, _ = solve_throughput(problem)
    assert feasible(problem, value * (1 + 1e-6))
    assert not feasible(problem, value * (1 - 1e-3))


def test_eight_devices_and_two_thousand_cuts_plan_in_seconds() -> None:
    problem = random_problem(np.random.default_rng(1), devices=8, n=2000, tight=False)
    started = time.perf_counter()
    value, segments = solve_latency(problem)
    elapsed = time.perf_counter() - started
    assert segments and math.isfinite(value)
    assert elapsed < 20.0  # a few seconds here; generous for a loaded 2-core CI box
