"""A collective group over plain TCP links (`transports.groupstream`): the same sums as
over ZeroMQ, sealed or not, large tensors sent both ways at once without a deadlock, a
hostile connection (junk, a huge declared length, half a message left hanging) refused
while the group serves on, a dead member named, and a group rebuilt on its listener."""

from __future__ import annotations

import socket
import struct
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from support.group_threads import run_members
from transports.collectives import ALLREDUCE_ALGORITHMS, CollectiveGroup
from transports.errors import CollectiveError
from transports.groupstream import StreamLinks, StreamListener
from transports.sealing import SealKeys
from transports.security import Security
from transports.streamframes import READ_BUFFER_BYTES

PLAIN = Security(insecure=True)
MAX_BYTES = 16 << 20


def listeners(n: int) -> list[StreamListener]:
    return [StreamListener("tcp://127.0.0.1:0", max_message_bytes=MAX_BYTES) for _ in range(n)]


def run_group(n: int, body: Callable[[CollectiveGroup], Any], *, sealed: bool = True,
              spin_us: int = 0, timeout_s: float = 10.0,
              bound: list[StreamListener] | None = None, keep: bool = False) -> list[Any]:
    """`body(group)` on n stream members, one thread each."""
    bound = bound or listeners(n)
    endpoints = [listener.address for listener in bound]

    def make(rank: int) -> CollectiveGroup:
        return CollectiveGroup(rank, endpoints, PLAIN, listener=bound[rank],
                               timeout_s=timeout_s, spin_us=spin_us,
                               seal_keys=SealKeys.shared(rank, n, b"t" * 32) if sealed
                               else None)

    return run_members(n, make, body, close=lambda g: g.close(keep_listener=keep), join_s=120)


@pytest.mark.parametrize(("n", "sealed", "spin_us"), [(2, True, 0), (3, True, 50),
                                                      (5, False, 0), (4, True, 0)])
def test_every_algorithm_sums_exactly(n: int, sealed: bool, spin_us: int) -> None:
    rng = np.random.default_rng(n)
    small = [rng.integers(-50, 50, (3, 11)).astype(np.float32) for _ in range(n)]
    # 3 MB each way at once: more than the kernel buffers, so sends must read meanwhile
    large = [np.full(3 << 18, rank + 1, np.float32) for rank in range(n)]

    def body(group: CollectiveGroup) -> list[np.ndarray]:
        time.sleep(0.003 * group.rank)
        out = [np.array(group.allreduce(small[group.rank], name, hub=n - 1))
               for name in ALLREDUCE_ALGORITHMS]
        out.append(np.array(group.allreduce(large[group.rank], "recursive_doubling")))
        out.append(np.array(group.allreduce(large[group.rank], "all_to_all")))
        group.barrier()
        return out

    results = run_group(n, body, sealed=sealed, spin_us=spin_us, timeout_s=30.0)
    want_small = np.sum(np.stack(small), axis=0)
    for result in results:
        assert not isinstance(result, Exception), result
        for got in result[:len(ALLREDUCE_ALGORITHMS)]:
            np.testing.assert_array_equal(got, want_small)
        for got in result[len(ALLREDUCE_ALGORITHMS):]:
            assert np.all(got == n * (n + 1) / 2)


def test_hostile_connections_are_refused_and_the_group_serves_on() -> None:
    bound = listeners(2)
    target = bound[1].address.removeprefix("tcp://").rsplit(":", 1)
    address = (target[0], int(target[1]))
    strangers: list[socket.socket] = []

    def body(group: CollectiveGroup) -> tuple[np.ndarray, np.ndarray, int]:
        first = np.array(group.allreduce(np.ones(8, np.float32), "recursive_doubling"))
        if group.rank == 0:
            for payload in (struct.pack("<I", MAX_BYTES + 1) + b"x" * 64,  # too large
                            struct.pack("<I", 100) + b"half",  # half a message, left open
                            struct.pack("<IHI", 10, 1, 4) + b"junk",  # a whole unsealed one
                            b"\x00" * 3):
                sock = socket.create_connection(address)
                sock.sendall(payload)
                strangers.append(sock)
            time.sleep(0.2)
        group.barrier()
        second = np.array(group.allreduce(np.full(8, 2, np.float32), "star"))
        return first, second, group.rejected

    results = run_group(2, body, bound=bound)
    for sock in strangers:
        sock.close()
    for result in results:
        assert not isinstance(result, Exception), result
        np.testing.assert_array_equal(result[0], np.full(8, 2))
        np.testing.assert_array_equal(result[1], np.full(8, 4))
    assert results[1][2] == 1  # the whole unsealed message: opened, refused, counted


def test_a_dead_member_is_named() -> None:
    def body(group: CollectiveGroup) -> Any:
        group.barrier()
        if group.rank == 2:
            return None  # leaves (closes its links) instead of joining the next call
        return group.allreduce(np.ones(4, np.float32), "star", hub=0)

    results = run_group(3, body, timeout_s=1.0)
    for rank in (0, 1):
        assert isinstance(results[rank], CollectiveError), results
    assert "rank 2" in str(results[0])


def test_a_group_rebuilt_on_its_listeners_works() -> None:
    bound = listeners(3)

    def body(group: CollectiveGroup) -> np.ndarray:
        return np.array(group.allreduce(np.full(5, group.rank, np.float32), "ring"))

    for _ in range(2):
        for result in run_group(3, body, bound=bound, keep=True):
            assert not isinstance(result, Exception), result
            np.testing.assert_array_equal(result, np.full(5, 3))
    for listener in bound:
        listener.close()


def test_a_stream_group_needs_plain_security() -> None:
    bound = listeners(1)
    from transports.keys import generate_keypair

    with pytest.raises(CollectiveError, match="insecure"):
        CollectiveGroup(0, [bound[0].address], Security(keypair=generate_keypair()),
                        listener=bound[0])
    bound[0].close()


def _framed(parts: list[bytes]) -> bytes:
    table = struct.pack("<H", len(parts)) + struct.pack(f"<{len(parts)}I", *map(len, parts))
    return struct.pack("<I", len(table) + sum(map(len, parts))) + table + b"".join(parts)


def test_messages_are_read_whole_however_their_bytes_arrive() -> None:
    """One read may hold several messages, part of one, or the start of one larger than
    the read buffer; a member must see each message whole, in order, whatever the cuts."""
    listener = StreamListener("tcp://127.0.0.1:0", max_message_bytes=MAX_BYTES)
    links = StreamLinks(0, [listener.address, "tcp://127.0.0.1:9"], listener, timeout_s=5.0)
    host, port = listener.address.removeprefix("tcp://").rsplit(":", 1)
    large = bytes(range(256)) * (2 * READ_BUFFER_BYTES // 256 + 3)
    messages = [[b"a"], [b"bb", b"ccc"], [large], [b"d" * 1000], [large[:READ_BUFFER_BYTES - 20]],
                [b"e"], [b"f" * 70_000, b"g"]]
    stream = b"".join(_framed(m) for m in messages)
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        got: list[list[bytes]] = []
        cuts = [1, 2, 3, 5, 8, 4096, 70_000, 7, 200_000]  # prefixes and bodies cut anywhere
        offset, index = 0, 0
        while offset < len(stream):
            size = cuts[index % len(cuts)]
            sock.sendall(stream[offset:offset + size])
            offset, index = offset + size, index + 1
            while (parts := links.recv(time.monotonic() + 0.002)) is not None:
                got.append([bytes(p) for p in parts])
        while len(got) < len(messages) and (parts := links.recv(time.monotonic() + 2)):
            got.append([bytes(p) for p in parts])
        assert got == messages
        sock.sendall(b"".join(_framed(m) for m in messages[:2]))  # two in one read
        both = [links.recv(time.monotonic() + 2), links.recv(time.monotonic() + 2)]
        assert [[bytes(p) for p in parts or []] for parts in both] == messages[:2]
        # a part table that does not add up: the connection is dropped, nothing queued
        sock.sendall(struct.pack("<IHII", 12, 2, 1, 9) + b"xy")
        assert links.recv(time.monotonic() + 0.3) is None
        assert sock.recv(1) == b""  # closed by the member
    finally:
        sock.close()
        links.close()
        listener.close()


def test_a_flood_of_tiny_frames_waits_its_turn_and_is_not_held_all_at_once() -> None:
    """Strangers who write thousands of empty frames at once are served one frame per
    connection per turn: a member's message comes within two turns, and a receive does
    not leave the member holding a flooder's whole write as queued messages."""
    listener = StreamListener("tcp://127.0.0.1:0", max_message_bytes=MAX_BYTES)
    links = StreamLinks(0, [listener.address, "tcp://127.0.0.1:9"], listener, timeout_s=5.0)
    host, port = listener.address.removeprefix("tcp://").rsplit(":", 1)
    flood = _framed([b""]) * (READ_BUFFER_BYTES // 10)  # 13,107 frames of 10 bytes each
    floods = [socket.create_connection((host, int(port))) for _ in range(8)]
    member = socket.create_connection((host, int(port)))
    try:
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for sock in floods:
            sock.sendall(flood)
        time.sleep(0.2)
        while links.recv(time.monotonic() + 0.2) is None:  # accepted, then read
            pass
        held = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        # a read buffer per connection (1 MiB for 8), not 8 x 13,107 queued messages
        assert held < 2 << 20, f"one receive left {held} bytes held"
        member.sendall(_framed([b"from a member"]))
        time.sleep(0.1)
        # a turn takes one frame of each flooder, and what the last turn queued goes
        # first: the member's message is within two turns
        for _ in range(4 * len(floods) + 2):
            parts = links.recv(time.monotonic() + 2)
            assert parts is not None
            if [bytes(p) for p in parts] == [b"from a member"]:
                break
        else:
            raise AssertionError("the member's message did not come in its turn")
    finally:
        for sock in [*floods, member]:
            sock.close()
        links.close()
        listener.close()
