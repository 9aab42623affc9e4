"""The in-process collective: exact sums over many rounds, gather order, timeouts."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from edge_runtime.llm import ThreadCollective


def run_ranks(n: int, body: object) -> list[object]:
    results: list[object] = [None] * n
    errors: list[BaseException] = []

    def target(rank: int) -> None:
        try:
            results[rank] = body(rank)  # type: ignore[operator]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(r,)) for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("n", [2, 3, 5])
def test_allreduce_and_gather_over_many_rounds(n: int) -> None:
    coll = ThreadCollective(n, hub=n - 1, timeout=10)

    def body(rank: int) -> list[float]:
        sums = []
        for step in range(200):
            x = np.full(4, rank * 1000 + step, dtype=np.float32)
            sums.append(float(coll.allreduce(rank, x)[0]))
            g = coll.gather(rank, np.full((1, rank + 1), rank, dtype=np.float32))
            if rank == n - 1:
                assert g is not None
                assert g.tolist() == [[r for r in range(n) for _ in range(r + 1)]]
            else:
                assert g is None
        return sums

    results = run_ranks(n, body)
    expected = [sum(r * 1000 + step for r in range(n)) for step in range(200)]
    assert all(r == expected for r in results)


def test_a_missing_peer_times_out() -> None:
    coll = ThreadCollective(2, hub=0, timeout=0.2)
    with pytest.raises(threading.BrokenBarrierError):
        coll.allreduce(0, np.zeros(2, np.float32))
