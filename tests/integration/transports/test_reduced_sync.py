"""Reduced-precision sync over real ZeroMQ sockets: every algorithm, every format, every
member the same result bits, the error within the format's stated bound, and a member
that syncs in another format named in a `CollectiveError` instead of summing garbage."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from support.group_threads import run_members
from transports.collectives import ALLREDUCE_ALGORITHMS, CollectiveGroup, GroupListener
from transports.errors import CollectiveError
from transports.sealing import SealKeys
from transports.security import Security

# the largest error one encode may add, relative to the largest |value| it encodes
_STEP = {"bf16": 2.0**-8, "fp16": 2.0**-10, "q8": 0.5 / 127}


def run_group(syncs: list[str], body: Callable[[CollectiveGroup], Any],
              timeout_s: float = 10.0) -> list[Any]:
    """`body(group)` on one member per entry of `syncs` (one thread each), sealed."""
    n, plain = len(syncs), Security(insecure=True)
    listeners = [GroupListener("tcp://127.0.0.1:0", plain) for _ in range(n)]
    endpoints = [listener.address for listener in listeners]

    def make(rank: int) -> CollectiveGroup:
        return CollectiveGroup(rank, endpoints, plain, listener=listeners[rank],
                               timeout_s=timeout_s, sync=syncs[rank],
                               seal_keys=SealKeys.shared(rank, n, b"s" * 32))

    return run_members(n, make, body, close=lambda g: g.close(), join_s=120)


@pytest.mark.parametrize("sync", ["bf16", "fp16", "q8"])
@pytest.mark.parametrize("n", [2, 3, 5])
def test_every_algorithm_gives_every_member_the_same_bits(sync: str, n: int) -> None:
    rng = np.random.default_rng(n)
    xs = [(rng.standard_normal((3, 70)) * rng.uniform(0.1, 8.0)).astype(np.float32)
          for _ in range(n)]
    exact = np.sum(np.stack(xs).astype(np.float64), axis=0)

    def body(group: CollectiveGroup) -> list[np.ndarray]:
        time.sleep(0.003 * group.rank)  # members arrive at different times
        out = [np.array(group.allreduce(xs[group.rank], name, hub=n - 1))
               for name in ALLREDUCE_ALGORITHMS]
        out.append(np.array(group.allreduce(np.full(4, group.rank, np.int64), "ring")))
        return out

    results = run_group([sync] * n, body)
    assert not any(isinstance(r, Exception) for r in results), results
    # each value is encoded at most once per hop it takes: log2(n) + 2 times
    encodes = math.ceil(math.log2(n)) + 2
    bound = encodes * _STEP[sync] * sum(float(np.abs(x).max()) for x in xs)
    for index, name in enumerate(ALLREDUCE_ALGORITHMS):
        first = results[0][index]
        assert first.dtype == np.float32 and first.shape == exact.shape
        for rank in range(1, n):
            assert results[rank][index].tobytes() == first.tobytes(), (name, rank)
        error = float(np.abs(first - exact).max())
        assert error <= bound, (name, error, bound)
        assert error > 1e-6, f"{name} under {sync} sent exact fp32"  # it really was reduced
    for result in results:  # integers always travel exact
        np.testing.assert_array_equal(result[-1], np.full(4, sum(range(n))))


def test_eight_members_agree_under_q8() -> None:
    rng = np.random.default_rng(8)
    xs = [rng.standard_normal(512).astype(np.float32) for _ in range(8)]

    def body(group: CollectiveGroup) -> list[bytes]:
        return [group.allreduce(xs[group.rank], name).tobytes()
                for name in ("recursive_doubling", "all_to_all")]

    results = run_group(["q8"] * 8, body)
    assert all(r == results[0] for r in results), "members disagree"


def test_fp32_sync_is_the_exact_sum() -> None:
    rng = np.random.default_rng(3)
    xs = [rng.integers(-50, 50, 300).astype(np.float32) for _ in range(3)]

    def body(group: CollectiveGroup) -> list[np.ndarray]:
        return [np.array(group.allreduce(xs[group.rank], name))
                for name in ALLREDUCE_ALGORITHMS]

    for result in run_group(["fp32"] * 3, body):
        for got in result:
            np.testing.assert_array_equal(got, xs[0] + xs[1] + xs[2])


def test_a_member_syncing_in_another_format_is_named() -> None:
    def body(group: CollectiveGroup) -> Any:
        return group.allreduce(np.ones(64, np.float32), "star", hub=0)

    results = run_group(["q8", "bf16"], body, timeout_s=3.0)
    assert isinstance(results[0], CollectiveError), results
    assert "rank 1" in str(results[0]) and "q8 payload" in str(results[0])
    assert isinstance(results[1], CollectiveError), results


def test_unknown_sync_format_is_refused() -> None:
    plain = Security(insecure=True)
    listener = GroupListener("tcp://127.0.0.1:0", plain)
    with pytest.raises(CollectiveError, match="q8"):
        CollectiveGroup(0, [listener.address], plain, listener=listener, sync="int4")
    listener.close()
