"""Hostile peers over real ZeroMQ: a `Server` in its own process and a collective group
stay alive, answer and keep computing whatever a raw socket sends them.

Issue 9, finding 1: one 60-byte message (a tensor of shape ``[0, 2**64-1]``) killed an
agent. Here that message, its variants and a few thousand random and mutated messages
go from a raw DEALER to a server process (each must be answered by exactly one reply to
the request id the server could read), and floods of the same go to group members in
the middle of their allreduces.
"""

from __future__ import annotations

import logging
import random
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq

import support.transports_peers as peers
from transports.channels import Client
from transports.collectives import CollectiveGroup, GroupListener
from transports.datawire import MAGIC, VERSION, encode_data
from transports.errors import CollectiveError
from transports.security import Security
from transports.wire import ALLOWED_DTYPES, PROTOCOL_VERSION, Frame, decode, encode, peek_request_id

CRASH_SHAPES = [[0, 2**64 - 1], [2**40, 2**40, 0], [0, 2**62]]
"""Shapes that hold no values but that numpy refuses to build (issue 9, finding 1)."""

REPLY_TIMEOUT_S = 20.0
"""Generous: the machine running the suite may be busy with other tests."""


def wire_message(request_id: int, tensors: list[list[Any]], frames: list[bytes],
                 kind: str = "echo", meta: dict[str, Any] | None = None) -> list[bytes]:
    header = {"v": PROTOCOL_VERSION, "k": kind, "id": request_id, "s": "rogue",
              "m": meta or {}, "t": tensors}
    return [msgpack.packb(header, use_bin_type=True), *frames]


def crash_messages(request_id: int) -> list[list[bytes]]:
    """The 60-byte killer and its variants: compressed, beside a valid tensor, bool."""
    messages = []
    for shape in CRASH_SHAPES:
        for tag in (None, "fp16", "int8:64"):
            messages.append(wire_message(request_id, [["x", "float32", shape, 0, tag]], [b""]))
        messages.append(wire_message(
            request_id, [["ok", "int64", [1], 8, None], ["x", "bool", shape, 0, None]],
            [bytes(8), b""]))
    return messages


def random_message(rng: random.Random) -> list[bytes]:
    """One malformed (now and then valid) message: random bytes, a header with wild
    fields, a mutated valid message or a crash message, at random."""
    kind = rng.randrange(5)
    request_id = rng.randrange(1, 2**64)
    if kind == 0:
        return [rng.randbytes(rng.randrange(200)) for _ in range(rng.randint(1, 4))]
    if kind == 1:
        tensors, frames = [], []
        for _ in range(rng.randint(0, 3)):
            dims = [0, 1, 2, 3, 2**20, 2**40, 2**64 - 1]
            shape = [rng.choice(dims) for _ in range(rng.randrange(4))]
            dtype = rng.choice([*ALLOWED_DTYPES, "float64", "object"])
            nbytes = rng.choice([0, 1, 4, 8, 12, 2**63, -1])
            tag = rng.choice([None, None, "fp16", "int8:64", "int8:0", "int8:-1", "int8:1048577"])
            tensors.append([rng.choice(["x", "y", "x"]), dtype, shape, nbytes, tag])
            frames.append(bytes(max(0, min(nbytes, 64))))
        frames += [b""] * rng.choice([0, 0, 1])
        meta_kind = rng.choice(["echo", "fuzz", "heartbeat", "", "k" * 70])
        return wire_message(rng.choice([request_id, 0]), tensors, frames, meta_kind)
    if kind == 2:
        shape = tuple(rng.randrange(4) for _ in range(rng.randrange(3)))
        dtype = rng.choice(["float32", "float16", "bool", "int64", "uint8"])
        tensors = {"x": np.ones(shape, dtype)}
        frame = Frame("echo", request_id, meta={"n": [1, "a"]}, tensors=tensors)
        parts = [bytes(p) for p in encode(frame, compression=rng.choice([None, "fp16", "int8:3"]))]
        target = rng.randrange(len(parts))
        body = bytearray(parts[target])
        action = rng.choice(["flip", "cut", "grow", "drop", "twice"])
        if action == "flip" and body:
            body[rng.randrange(len(body))] ^= 1 << rng.randrange(8)
        elif action == "cut":
            del body[rng.randrange(len(body) + 1):]
        elif action == "grow":
            body += rng.randbytes(rng.randint(1, 8))
        parts[target] = bytes(body)
        if action == "drop" and len(parts) > 1:
            del parts[target]
        elif action == "twice":
            parts.append(parts[target])
        return parts
    if kind == 3:
        return rng.choice(crash_messages(request_id))
    return wire_message(request_id, [["x", "int8", [3], 3, None]], [b"\x01\x02\x03"])


def exchange(socket: zmq.Socket[bytes], messages: list[list[bytes]]) -> list[Frame]:
    """Send every message, then read as many replies, each one a well-formed frame."""
    for parts in messages:
        socket.send_multipart(parts)
    replies = []
    for _ in messages:
        assert socket.poll(int(REPLY_TIMEOUT_S * 1000)), "the server stopped answering"
        replies.append(decode(socket.recv_multipart()))
    return replies


@pytest.fixture
def rogue_context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield context
    context.destroy(linger=0)


def test_a_server_process_survives_crash_messages_and_thousands_of_malformed_ones(
    keys: tuple[Path, Path], rogue_context: zmq.Context[zmq.Socket[bytes]]
) -> None:
    server_dir, client_dir = keys
    security = Security.from_dir(client_dir)
    with peers.peer_process(server_dir) as (address, key, process):
        rogue = rogue_context.socket(zmq.DEALER)
        security.apply_client(rogue, key)
        rogue.connect(address)
        for parts in crash_messages(4242):
            (reply,) = exchange(rogue, [parts])
            assert reply.is_error and reply.request_id == 4242
            assert reply.meta["error_type"] == "ProtocolError"
            assert "more than" in reply.meta["message"], reply.meta
        rng = random.Random(9)
        for _ in range(30):  # 3,000 messages, 100 in flight at a time
            batch = [random_message(rng) for _ in range(100)]
            replies = exchange(rogue, batch)
            assert sorted(r.request_id for r in replies) == sorted(map(peek_request_id, batch))
        assert process.poll() is None
        x = np.arange(12, dtype=np.float32).reshape(3, 4)
        with Client(address, security, server_public_key=key) as client:
            echoed = client.request(Frame("echo", tensors={"x": x}), REPLY_TIMEOUT_S)
            np.testing.assert_array_equal(echoed.tensors["x"], x)
            acted = client.request(Frame("count"), REPLY_TIMEOUT_S).meta["acted"]
            assert acted > 1  # valid messages in the flood were acted on; it kept serving


def data_junk(rng: random.Random, size: int) -> list[bytes]:
    """A malformed collective message: a crash-shaped data message, a data message
    from a rank outside the group, a `Frame` with no rank, or random bytes."""
    kind = rng.randrange(4)
    if kind == 0:
        dims = rng.choice(CRASH_SHAPES)
        head = struct.pack("<2sBBBxHIQ", MAGIC, VERSION, 0, len(dims), 0, 0, 1)
        return [head + struct.pack(f"<{len(dims)}Q", *dims)]
    if kind == 1:
        stranger = size + 3  # a rank outside the group
        ones = np.ones(3, np.float32)
        return [bytes(p) for p in encode_data(rng.randrange(1, 5), 0, stranger, ones)]
    if kind == 2:
        return wire_message(1, [["x", "float32", rng.choice(CRASH_SHAPES), 0, "fp16"]], [b""], "c")
    return [MAGIC + rng.randbytes(rng.randrange(40))]


class Flood:
    """A process sending junk to every given address as fast as it can, until it is
    killed on exit (or 60 s pass: a failed test never leaves it behind). A process, not a
    thread: it must outpace the members, which it could not while sharing their GIL."""

    SCRIPT = (
        "import sys, time, msgpack, zmq\n"
        "addresses, messages = msgpack.unpackb(bytes.fromhex(sys.stdin.readline()))\n"
        "context = zmq.Context()\n"
        "sockets = [context.socket(zmq.DEALER) for _ in addresses]\n"
        "for socket, address in zip(sockets, addresses):\n"
        "    socket.connect(address)\n"
        "print('flooding', flush=True)\n"
        "end = time.monotonic() + 60\n"
        "while time.monotonic() < end:\n"
        "    for message in messages:\n"
        "        for socket in sockets:\n"
        "            try:\n"
        "                socket.send_multipart(message, zmq.NOBLOCK)\n"
        "            except zmq.Again:\n"
        "                time.sleep(0.0005)\n"
    )

    def __init__(self, addresses: list[str], size: int) -> None:
        rng = random.Random(3)
        junk = [data_junk(rng, size) for _ in range(200)]
        self.payload = msgpack.packb([addresses, junk], use_bin_type=True).hex() + "\n"

    def __enter__(self) -> Flood:
        self.process = subprocess.Popen(
            [sys.executable, "-c", self.SCRIPT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(self.payload)
        self.process.stdin.flush()
        assert self.process.stdout.readline().strip() == "flooding"
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


def test_group_members_flooded_with_crash_messages_still_sum_correctly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="transports.group")
    security = Security(insecure=True)
    listeners = [GroupListener("tcp://127.0.0.1:0", security) for _ in range(2)]
    endpoints = [listener.address for listener in listeners]
    results: list[Any] = [None, None]

    def member(rank: int) -> None:
        group = CollectiveGroup(rank, endpoints, security, listener=listeners[rank], timeout_s=20)
        try:
            x = np.full(5, rank + 1, np.float32)
            results[rank] = [call(x) for _ in range(10) for call in
                             (group.star_allreduce, group.ring_allreduce)]
        except Exception as error:  # handed back to the test
            results[rank] = error
        finally:
            group.close()

    with Flood(endpoints, size=2):
        threads = [threading.Thread(target=member, args=(rank,)) for rank in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(thread.is_alive() for thread in threads), "a member hung"
    for result in results:
        assert not isinstance(result, Exception), result
        for got in result:
            np.testing.assert_array_equal(got, np.full(5, 3, np.float32))
    assert any("dropped a malformed" in record.getMessage() for record in caplog.records)


def test_a_flood_cannot_keep_a_member_waiting_past_its_deadline() -> None:
    """Rank 1 never joins; junk keeps arriving at rank 0. Rank 0 must still fail within
    its timeout, naming rank 1, instead of handling junk forever."""
    security = Security(insecure=True)
    listeners = [GroupListener("tcp://127.0.0.1:0", security) for _ in range(2)]
    endpoints = [listener.address for listener in listeners]
    outcome: list[Any] = [None]

    def hub() -> None:
        group = CollectiveGroup(0, endpoints, security, listener=listeners[0], timeout_s=1.0)
        start = time.monotonic()
        try:
            group.star_allreduce(np.ones(3, np.float32))
        except CollectiveError as error:
            outcome[0] = (error, time.monotonic() - start)
        finally:
            group.close()

    try:
        with Flood([endpoints[0]], size=2):
            thread = threading.Thread(target=hub, daemon=True)
            thread.start()
            thread.join(timeout=60)
            assert not thread.is_alive(), "the flood kept rank 0 waiting past its deadline"
    finally:
        listeners[1].close()
    error, elapsed = outcome[0]
    assert "rank 1" in error.member
    assert elapsed < 15  # 1 s timeout + a liveness grace; the flood ran all along
