"""Tools for tests that attack a live agent: raw sockets, hand-made frames, RSS."""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import psutil
import zmq

from transports.wire import Frame, decode

# ZMTP 3.0 greeting: signature, version 3.0, mechanism name padded to 20 bytes,
# as-server flag, 31 bytes of filler (RFC 23).
ZMTP_SIGNATURE = b"\xff" + b"\x00" * 8 + b"\x7f"


def zmtp_greeting(mechanism: bytes) -> bytes:
    return ZMTP_SIGNATURE + b"\x03\x00" + mechanism.ljust(20, b"\x00") + b"\x00" + b"\x00" * 31


def long_command_header(size: int) -> bytes:
    """A ZMTP command frame header declaring `size` bytes (flags: command + long size)."""
    return b"\x06" + struct.pack(">Q", size)


def tcp_endpoint(address: str) -> tuple[str, int]:
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    return host, int(port)


def rss_bytes(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def header(kind: str, request_id: int = 1, meta: Any = None, tensors: Any = None,
           version: int = 1) -> bytes:
    """A msgpack frame header written by hand (bypasses `wire.encode`'s checks)."""
    return msgpack.packb({"v": version, "k": kind, "id": request_id, "s": "",
                          "m": {} if meta is None else meta,
                          "t": [] if tensors is None else tensors}, use_bin_type=True)


@contextlib.contextmanager
def raw_dealer(address: str) -> Iterator[zmq.Socket[bytes]]:
    """A plain (insecure) DEALER to `address`, closed on exit."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    try:
        yield sock
    finally:
        sock.close()
        context.term()


def ask(sock: zmq.Socket[bytes], parts: list[bytes], wait_s: float = 5.0) -> Frame:
    """Send raw `parts` and return the decoded answer (AssertionError if none comes)."""
    sock.send_multipart(parts)
    assert sock.poll(int(wait_s * 1000)), "no answer"
    return decode(sock.recv_multipart())


def stream_until_closed(address: str, prefix: bytes, total: int,
                        chunk: int = 1 << 20) -> int:
    """Open a raw TCP connection, send `prefix` then zeros up to `total` bytes; return how
    many bytes went out before the peer closed the connection (`total` if it never did)."""
    host, port = tcp_endpoint(address)
    sent = 0
    with socket.create_connection((host, port), timeout=10) as conn:
        conn.settimeout(10)
        conn.sendall(prefix)
        try:
            peer_greeting = conn.recv(64)  # the server's greeting, or b"" if it closed
            del peer_greeting
            zeros = bytes(chunk)
            while sent < total:
                conn.sendall(zeros)
                sent += chunk
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            return sent
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # sent it all: does the peer close now?
            try:
                if conn.recv(4096) == b"":
                    return sent
            except (ConnectionResetError, TimeoutError):
                return sent
    return sent


__all__ = ["ask", "header", "long_command_header", "raw_dealer", "rss_bytes",
           "stream_until_closed", "tcp_endpoint", "zmtp_greeting"]
