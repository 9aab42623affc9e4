"""Recursive doubling and the cost model's choice, over real ZeroMQ sockets.

The choice test runs every algorithm on emulated links (`transports.linkemu`) and checks
that the one `transports.cost.best_allreduce` predicts is the one measured fastest
(within 20 %: algorithms the model prices alike are measured alike, to noise)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from support.group_threads import run_members
from transports.collectives import ALLREDUCE_ALGORITHMS, CollectiveGroup, GroupListener
from transports.cost import best_allreduce, uniform
from transports.errors import CollectiveError
from transports.keys import generate_keypair
from transports.linkemu import LinkEmulator, LinkSpec
from transports.sealing import SealKeys
from transports.security import Security


def run_group(n: int, body: Callable[[CollectiveGroup], Any], *, secure: bool = True,
              timeout_s: float = 10.0, sealed: bool = False,
              emulation: Callable[[int], LinkEmulator | None] = lambda rank: None) -> list[Any]:
    """`body(group)` on n members, one thread each; CURVE, plain, or plain + sealed."""
    pairs = [generate_keypair() for _ in range(n)]
    plain = not secure or sealed
    securities = [Security(insecure=True) if plain else Security(keypair=p) for p in pairs]
    keys = [p.public for p in pairs]
    listeners = [GroupListener("tcp://127.0.0.1:0", s, peer_keys=keys) for s in securities]
    endpoints = [listener.address for listener in listeners]

    def make(rank: int) -> CollectiveGroup:
        return CollectiveGroup(rank, endpoints, securities[rank], listener=listeners[rank],
                               peer_keys=None if plain else keys, timeout_s=timeout_s,
                               emulation=emulation(rank),
                               seal_keys=SealKeys.from_curve(rank, pairs[rank].secret, keys,
                                                             b"test") if sealed else None)

    return run_members(n, make, body, close=lambda g: g.close(), join_s=120)


def inputs(n: int, shape: tuple[int, ...]) -> list[np.ndarray]:
    rng = np.random.default_rng(n)
    return [rng.integers(-50, 50, size=shape).astype(np.float32) for _ in range(n)]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 6, 8])
def test_recursive_doubling_sums_exactly_and_alike_on_every_member(n: int) -> None:
    xs = inputs(n, (3, 11))
    want = np.sum(np.stack(xs), axis=0)
    rng = np.random.default_rng(n)
    floats = [rng.standard_normal(257).astype(np.float32) for _ in range(n)]

    def body(group: CollectiveGroup) -> list[np.ndarray]:
        time.sleep(0.005 * group.rank)  # members arrive at different times
        exact = np.array(group.allreduce(xs[group.rank], "recursive_doubling"))
        rounded = np.array(group.recursive_doubling_allreduce(floats[group.rank]))
        ints = np.array(group.recursive_doubling_allreduce(np.full(5, group.rank, np.int32)))
        return [exact, rounded, ints]

    results = run_group(n, body)
    for rank, result in enumerate(results):
        assert not isinstance(result, Exception), result
        exact, rounded, ints = result
        assert exact.dtype == np.float32 and ints.dtype == np.int32
        np.testing.assert_array_equal(exact, want, err_msg=f"rank {rank}")
        np.testing.assert_array_equal(ints, np.full(5, sum(range(n)), np.int32))
        # a pairwise sum rounds differently from rank order, but the same on every member
        np.testing.assert_array_equal(rounded, results[0][1])
        np.testing.assert_allclose(rounded, np.sum(np.stack(floats), axis=0), rtol=1e-5,
                                   atol=1e-5)


@pytest.mark.parametrize("sealed", [False, True], ids=["curve", "sealed"])
def test_every_named_algorithm_runs_and_an_unknown_name_is_refused(sealed: bool) -> None:
    def body(group: CollectiveGroup) -> list[np.ndarray]:
        x = np.full(70_000, group.rank + 1, np.float32)  # over the zero-copy threshold
        out = [np.array(group.allreduce(x, name, hub=1)) for name in ALLREDUCE_ALGORITHMS]
        assert group.rejected == 0
        return out

    for result in run_group(3, body, sealed=sealed):
        assert not isinstance(result, Exception), result
        for got in result:
            np.testing.assert_array_equal(got, np.full(70_000, 6, np.float32))
    errors = run_group(2, lambda g: g.allreduce(np.ones(2, np.float32), "butterfly"))
    assert all(isinstance(e, CollectiveError) and "butterfly" in str(e) for e in errors)


def _measure(n: int, nbytes: int, spec: LinkSpec, repeats: int = 5) -> dict[str, float]:
    """Per algorithm, the median over `repeats` calls of (last member done − last member
    started): members share one clock (threads), and a barrier releases them a hop apart."""
    x = np.ones(nbytes // 4, np.float32)

    def body(group: CollectiveGroup) -> dict[str, list[tuple[float, float]]]:
        spans: dict[str, list[tuple[float, float]]] = {name: [] for name in ALLREDUCE_ALGORITHMS}
        for _ in range(repeats):
            for name in ALLREDUCE_ALGORITHMS:
                group.barrier()
                start = time.perf_counter()
                group.allreduce(x, name)
                spans[name].append((start, time.perf_counter()))
        return spans

    results = run_group(n, body, secure=False, timeout_s=30.0,
                        emulation=lambda rank: LinkEmulator(default=spec, seed=rank))
    for result in results:
        assert not isinstance(result, Exception), result
    return {name: statistics.median(max(r[name][i][1] for r in results)
                                    - max(r[name][i][0] for r in results)
                                    for i in range(repeats))
            for name in ALLREDUCE_ALGORITHMS}


@pytest.mark.parametrize(("n", "nbytes", "spec", "not_this"), [
    # fast links, a decode-sized tensor: latency-bound; star, all-to-all and recursive
    # doubling take 2 hops (n = 3: the fold overlaps the others' round), the ring 2(n-1)
    (3, 4096, LinkSpec(delay_s=0.010, bandwidth_bytes_per_s=1e9), "ring"),
    (4, 4096, LinkSpec(delay_s=0.010, bandwidth_bytes_per_s=1e9), "ring"),
    # slow links, a prefill-sized tensor: bandwidth-bound; the star's hub carries 3x
    (4, 256 * 1024, LinkSpec(delay_s=0.010, bandwidth_bytes_per_s=5e6), "star"),
], ids=["fast-3", "fast-4", "slow-4"])
def test_the_predicted_best_allreduce_is_the_measured_best_on_emulated_links(
        n: int, nbytes: int, spec: LinkSpec, not_this: str) -> None:
    assert spec.bandwidth_bytes_per_s is not None
    latency, bandwidth = uniform(n, spec.delay_s, spec.bandwidth_bytes_per_s)
    chosen = best_allreduce(nbytes, latency, bandwidth, 30e-6)[0]
    assert chosen != not_this
    measured = _measure(n, nbytes, spec)
    fastest = min(measured, key=lambda name: measured[name])
    assert measured[chosen] <= 1.2 * measured[fastest], (chosen, measured)
    # and the model's clear loser is measured slower than its pick
    assert measured[not_this] > 1.2 * measured[chosen], (not_this, measured)
