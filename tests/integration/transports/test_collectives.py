"""Collectives over real ZeroMQ with CURVE: results equal np.sum, failures name the culprit."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import support.transports_member as member_proc
from support.group_threads import run_members
from transports.collectives import CollectiveGroup, GroupListener
from transports.errors import CollectiveError
from transports.keys import generate_keypair
from transports.linkemu import LinkEmulator, LinkSpec
from transports.security import Security

Body = Callable[[CollectiveGroup], Any]


def run_group(
    n: int,
    body: Body,
    *,
    timeout_s: float = 10.0,
    secure: bool = True,
    emulation: Callable[[int], LinkEmulator | None] = lambda rank: None,
    compression: str | None = None,
) -> list[Any]:
    """Run `body(group)` on n members, each in its own thread with its own context."""
    pairs = [generate_keypair() for _ in range(n)]
    securities = [Security(keypair=p) if secure else Security(insecure=True) for p in pairs]
    keys = [p.public for p in pairs]
    listeners = [GroupListener("tcp://127.0.0.1:0", s, peer_keys=keys) for s in securities]
    endpoints = [listener.address for listener in listeners]

    def make(rank: int) -> CollectiveGroup:
        return CollectiveGroup(
           rank, endpoints, securities[rank], listener=listeners[rank],
           peer_keys=[p.public for p in pairs], timeout_s=timeout_s, emulation=emulation(rank),
           compression=compression,
       )

    return run_members(n, make, body, close=lambda g: g.close(), join_s=60)


def inputs(n: int, shape: tuple[int, ...], dtype: str = "float32") -> list[np.ndarray]:
    rng = np.random.default_rng(n)
    return [rng.integers(-50, 50, size=shape).astype(dtype) for _ in range(n)]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_every_allreduce_equals_np_sum_with_unequal_member_speeds(n: int) -> None:
    xs = inputs(n, (3, 11))  # 33 values: chunks of unequal size for n = 2, 4, 5
    want = np.sum(np.stack(xs), axis=0)

    def body(group: CollectiveGroup) -> dict[str, np.ndarray]:
        x = xs[group.rank]
        out = {}
        for name, call in (
            ("star0", lambda: group.star_allreduce(x, hub=0)),
            ("star_last", lambda: group.star_allreduce(x, hub=n - 1)),
            ("ring", lambda: group.ring_allreduce(x)),
            ("a2a", lambda: group.all_to_all_allreduce(x)),
        ):
            time.sleep(0.01 * group.rank)  # member r is slower than member r-1
            out[name] = np.array(call())
        return out

    for rank, result in enumerate(run_group(n, body)):
        assert not isinstance(result, Exception), result
        for name, got in result.items():
            assert got.dtype == np.float32 and got.shape == (3, 11), (rank, name)
            np.testing.assert_array_equal(got, want, err_msg=f"rank {rank} {name}")


def test_random_float_sums_match_within_fp32_rounding() -> None:
    rng = np.random.default_rng(7)
    xs = [rng.standard_normal(1000).astype(np.float32) for _ in range(3)]
    want = np.sum(np.stack(xs).astype(np.float64), axis=0)
    results = run_group(3, lambda g: [g.star_allreduce(xs[g.rank], 1), g.ring_allreduce(xs[g.rank]),
                                      g.all_to_all_allreduce(xs[g.rank])])
    for result in results:
        for got in result:
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "int32", "int8", "int64"])
def test_other_dtypes_sum_in_a_wide_accumulator(dtype: str) -> None:
    xs = [np.full(9, 3, dtype=dtype) * (r + 1) for r in range(3)]
    want = np.sum(np.stack(xs).astype(np.int64), axis=0).astype(dtype)
    def body(g: CollectiveGroup) -> list[np.ndarray]:
        x = xs[g.rank]
        return [g.star_allreduce(x), g.ring_allreduce(x), g.all_to_all_allreduce(x)]

    for result in run_group(3, body, secure=False):
        for got in result:
            assert got.dtype == np.dtype(dtype)
            np.testing.assert_array_equal(got, want)


def test_compressed_collectives_stay_within_the_compression_error() -> None:
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal(256).astype(np.float32) for _ in range(3)]
    want = np.sum(np.stack(xs), axis=0)
    for method, tolerance in (("fp16", 5e-3), ("int8", 0.1)):
        results = run_group(
            3, lambda g: [g.star_allreduce(xs[g.rank]), g.ring_allreduce(xs[g.rank])],
            secure=False, compression=method,
        )
        for result in results:
            for got in result:
                assert got.dtype == np.float32
                np.testing.assert_allclose(got, want, atol=tolerance)
                assert not np.array_equal(got, want)  # lossy: the wire really was compressed


def test_broadcast_gather_and_barrier() -> None:
    def body(group: CollectiveGroup) -> tuple[Any, ...]:
        x = np.full((2, 2), group.rank, dtype=np.int32)
        root_value = np.arange(5, dtype=np.int64) if group.rank == 2 else None
        group.barrier()
        return group.broadcast(root_value, root=2), group.gather(x, root=1)

    results = run_group(4, body)
    for rank, (broadcast, gathered) in enumerate(results):
        np.testing.assert_array_equal(broadcast, np.arange(5))
        if rank == 1:
            assert [int(g[0, 0]) for g in gathered] == [0, 1, 2, 3]
        else:
            assert gathered is None


def test_zero_d_and_empty_tensors() -> None:
    results = run_group(3, lambda g: [g.star_allreduce(np.float32(g.rank)),
                                      g.ring_allreduce(np.zeros((0, 3), np.float32)),
                                      g.all_to_all_allreduce(np.array(2.0, np.float32))])
    for star, ring, a2a in results:
        assert star.shape == () and float(star) == 3.0
        assert ring.shape == (0, 3)
        assert a2a.shape == () and float(a2a) == 6.0


def test_emulated_wifi_slows_a_star_allreduce_as_the_cost_model_says() -> None:
    spec = LinkSpec(delay_s=0.02)

    def body(group: CollectiveGroup) -> float:
        group.star_allreduce(np.ones(4, np.float32))  # connections warm
        start = time.perf_counter()
        group.star_allreduce(np.ones(4, np.float32))
        return time.perf_counter() - start

    times = run_group(3, body, secure=False, emulation=lambda r: LinkEmulator(default=spec))
    assert all(0.035 <= t < 0.5 for t in times), times  # two hops of 20 ms each


def test_mismatched_shapes_fail_with_a_typed_error_naming_the_member() -> None:
    results = run_group(3, lambda g: g.star_allreduce(np.ones(4 if g.rank != 2 else 5, np.float32)),
                        timeout_s=3.0)
    for result in results:
        assert isinstance(result, CollectiveError)
        assert result.member.startswith("rank 2 ")


def test_a_silent_hub_is_named_within_the_timeout() -> None:
    def body(group: CollectiveGroup) -> Any:
        if group.rank == 0:
            time.sleep(2.0)  # the hub never takes part
            return None
        start = time.monotonic()
        with pytest.raises(CollectiveError) as info:
            group.star_allreduce(np.ones(3, np.float32), hub=0)
        return info.value.member, time.monotonic() - start

    results = run_group(3, body, timeout_s=1.0)
    for member, elapsed in results[1:]:
        assert member.startswith("rank 0 ") and 0.9 <= elapsed < 1.8


def test_allreduce_across_processes_and_a_member_killed_mid_collective() -> None:
    """Four member processes: results equal np.sum; then rank 3 is SIGKILLed and the
    survivors' next star allreduce (hub 0) fails naming rank 3 within the timeout."""
    n, timeout_s = 4, 2.0
    pairs = [generate_keypair() for _ in range(n)]
    keys = [[p.public.decode(), p.secret.decode()] for p in pairs]
    configs: list[dict[str, object]] = [
        {"rank": r, "keys": keys, "timeout_s": timeout_s, "delay_s": 0.02 * r,
         "stall_after": r == n - 1}
        for r in range(n)
    ]
    processes = member_proc.start_members(configs)
    try:
        want = np.sum(np.stack([member_proc.member_input(r) for r in range(n)]), axis=0)
        for process in processes:
            results = json.loads(member_proc.read_line(process))["results"]
            for name, got in results.items():
                np.testing.assert_array_equal(np.array(got, np.float32), want, err_msg=name)
        processes[-1].send_signal(signal.SIGKILL)
        for process in processes[:-1]:
            outcome = json.loads(member_proc.read_line(process))
            assert outcome["member"].startswith("rank 3 "), outcome
            assert "rank 3" in outcome["error"]
            assert outcome["elapsed_s"] < timeout_s + 1.5
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)


def test_a_group_can_be_rebuilt_on_the_same_listener() -> None:
    security = Security.insecure_mode()
    listeners = [GroupListener("tcp://127.0.0.1:0", security) for _ in range(2)]
    endpoints = [listener.address for listener in listeners]
    results: list[Any] = [None, None]

    def member(rank: int) -> None:
        first = CollectiveGroup(rank, endpoints, security, listener=listeners[rank], timeout_s=5)
        first.star_allreduce(np.ones(2, np.float32))
        first.barrier()
        first.close(keep_listener=True)
        second = CollectiveGroup(rank, endpoints, security, listener=listeners[rank], timeout_s=5)
        results[rank] = second.star_allreduce(np.full(2, rank, np.float32))
        second.close()

    threads = [threading.Thread(target=member, args=(rank,)) for rank in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    for result in results:
        np.testing.assert_array_equal(result, [1.0, 1.0])
    assert listeners[0].closed
    with pytest.raises(CollectiveError, match="listener is closed"):
        CollectiveGroup(0, endpoints, security, listener=listeners[0])


def test_large_tensors_take_the_zero_copy_path_and_sum_exactly() -> None:
    xs = inputs(3, (40_000,))  # 160 KB: header and tensor travel as two frames
    want = np.sum(np.stack(xs), axis=0)

    def body(g: CollectiveGroup) -> list[np.ndarray]:
        x = xs[g.rank]
        star = np.array(g.star_allreduce(x, hub=1))
        return [star, g.ring_allreduce(x), g.all_to_all_allreduce(x), g.broadcast(x, root=2)]

    for result in run_group(3, body):
        assert not isinstance(result, Exception), result
        for got in result[:3]:
            np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(result[3], xs[2])


def test_malformed_data_messages_are_dropped_and_the_group_keeps_working(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging
    import struct

    import zmq

    from transports.datawire import MAGIC, encode_data

    security = Security(insecure=True)
    listeners = [GroupListener("tcp://127.0.0.1:0", security) for _ in range(2)]
    endpoints = [listener.address for listener in listeners]
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    caplog.set_level(logging.WARNING, logger="transports.group")
    rogue = context.socket(zmq.DEALER)
    rogue.connect(endpoints[0])
    for parts in (
        [MAGIC + b"\x01garbage"],                                       # truncated header
        [struct.pack("<2sBBBxHIQ", MAGIC, 9, 0, 1, 1, 0, 1)],           # unknown version
        encode_data(1, 0, 9, np.zeros(3, np.float32)),                  # rank 9: not a member
        [bytes(encode_data(1, 0, 1, np.zeros(3, np.float32))[0])[:-1]],  # a byte short
        [b"\xc1C", b"", b""],                                           # three parts
    ):
        rogue.send_multipart(parts)
    time.sleep(0.2)  # queued at rank 0 before the group starts

    def member(rank: int, out: list[Any]) -> None:
        group = CollectiveGroup(rank, endpoints, security, listener=listeners[rank], timeout_s=5)
        try:
            out[rank] = [group.star_allreduce(np.full(3, rank + 1, np.float32)) for _ in range(3)]
        except Exception as error:  # handed back to the test
            out[rank] = error
        finally:
            group.close()

    results: list[Any] = [None, None]
    threads = [threading.Thread(target=member, args=(r, results)) for r in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    rogue.close(linger=0)
    context.term()
    for result in results:
        assert not isinstance(result, Exception), result
        for got in result:
            np.testing.assert_array_equal(got, np.full(3, 3, np.float32))
    dropped = [r for r in caplog.records if "dropped a malformed" in r.getMessage()]
    assert len(dropped) == 5, [r.getMessage() for r in dropped]


def test_a_listener_that_cannot_bind_releases_what_it_took(tmp_path: Any) -> None:
    """A taken port is a ZMQError, and the socket and authorizer are not left behind."""
    import zmq

    from transports.keys import init_keys

    init_keys(tmp_path)
    security = Security.from_dir(tmp_path)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    first = GroupListener("tcp://127.0.0.1:0", security, context=context)
    try:
        with pytest.raises(zmq.ZMQError):
            GroupListener(first.address, security, context=context)
        # Everything the failed listener opened is closed: the context terms without hanging
        # once the first listener is closed too.
    finally:
        first.close()
    context.term()
