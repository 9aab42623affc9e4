"""Socket plumbing shared by channels and collectives: options, timeouts, closing.

One place defines how every socket of this package behaves (linger, heartbeats,
reconnect backoff, send timeout) and the `Endpoint` base that owns a socket, its
context and an emulated-link outbox. Every timeout is documented where defined.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import zmq

from transports.compression import parse_compression
from transports.errors import PeerTimeoutError, PeerUnreachableError
from transports.linkemu import LinkEmulator, Outbox
from transports.wire import Buffer

log = logging.getLogger(__name__)

LINGER_MS = 500
"""How long close() lets queued outgoing messages drain before dropping them: long
enough for a final reply on loopback/LAN, short enough that exit never hangs."""

HEARTBEAT_IVL_MS = 1000
"""ZMTP heartbeat interval: a PING every second on idle connections."""

HEARTBEAT_TIMEOUT_MS = 5000
"""A connection with no traffic (not even a heartbeat) for 5 s is closed as dead."""

RECONNECT_IVL_MS = 100
RECONNECT_IVL_MAX_MS = 2000
"""A DEALER retries a lost connection after 0.1 s, backing off to 2 s between tries."""

SEND_TIMEOUT_MS = 5000
"""A send blocked this long (peer's queue full, at the high-water mark) raises
PeerTimeoutError instead of blocking the caller forever."""


def configure_socket(socket: zmq.Socket[bytes]) -> None:
    """Options every socket of this package gets (see the constants above)."""
    socket.linger = LINGER_MS
    socket.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    socket.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TIMEOUT_MS)
    socket.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
    socket.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
    socket.sndtimeo = SEND_TIMEOUT_MS


def poll_ms(wait_s: float, outbox: Outbox | None) -> int:
    """Milliseconds to poll for input. ZeroMQ polls in whole ms; with emulated sends
    pending, round down and nap briefly when under 1 ms, so a held message leaves
    within ~0.2 ms of its due time instead of up to 1 ms late."""
    if outbox is None or len(outbox) == 0:
        return int(wait_s * 1000 + 0.999)
    whole = int(wait_s * 1000)
    if whole == 0 and wait_s > 0:
        time.sleep(min(wait_s, 0.0002))
    return whole


def bound_address(socket: zmq.Socket[bytes]) -> str:
    """The real address a socket is bound to (with the port chosen for port 0)."""
    endpoint = socket.getsockopt(zmq.LAST_ENDPOINT)
    return endpoint.decode() if isinstance(endpoint, bytes) else str(endpoint)


class Endpoint:
    """What Server and Client share: a socket, its context, emulation, closing."""

    def __init__(
        self,
        socket_type: int,
        context: zmq.Context[zmq.Socket[bytes]] | None,
        emulation: LinkEmulator | None,
        max_message_bytes: int,
        compression: str | None = None,
    ) -> None:
        parse_compression(compression)  # fail early on a bad name
        self.compression = compression
        self._own_context = context is None
        self._context: zmq.Context[zmq.Socket[bytes]] = context or zmq.Context()
        self._socket: zmq.Socket[bytes] = self._context.socket(socket_type)
        configure_socket(self._socket)
        self._emulation = emulation
        self._outbox = Outbox(emulation.clock) if emulation else None
        self.max_message_bytes = max_message_bytes
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def _send_parts(self, parts: Sequence[Buffer | bytes], peer: str, where: str) -> None:
        if self._closed:
            raise PeerUnreachableError(where, f"channel to {where} is closed")
        if self._emulation is None or self._outbox is None:
            self._raw_send(parts, where)
            return
        nbytes = sum(memoryview(p).nbytes for p in parts)
        due = self._emulation.schedule(peer, nbytes)
        if due is None:
            return  # lost on the emulated link
        held = [bytes(p) for p in parts]  # the caller may reuse its arrays before `due`
        self._outbox.push(due, lambda: self._raw_send(held, where))
        self._outbox.flush()

    def _raw_send(self, parts: Sequence[Buffer | bytes], where: str) -> None:
        try:
            self._socket.send_multipart(parts, copy=False)
        except zmq.Again:
            self._check_refused()
            timeout_ms = self._socket.getsockopt(zmq.SNDTIMEO)
            timeout_s = (timeout_ms if isinstance(timeout_ms, int) else SEND_TIMEOUT_MS) / 1000
            raise PeerTimeoutError(where, timeout_s, "free send slot") from None
        except zmq.ZMQError as error:
            if error.errno == zmq.EHOSTUNREACH:
                raise PeerUnreachableError(where) from None
            raise

    def _poll(self, timeout_s: float) -> list[zmq.Frame] | None:
        """Receive one multipart message within `timeout_s`, flushing emulated sends."""
        if self._outbox is None:
            try:  # a message already waiting needs no poller
                parts: list[zmq.Frame] = self._socket.recv_multipart(zmq.NOBLOCK, copy=False)
                return parts
            except zmq.Again:
                pass
        deadline = time.monotonic() + max(0.0, timeout_s)
        while True:
            if self._outbox is not None:
                self._outbox.flush()
                wait = self._outbox.poll_timeout(deadline)
            else:
                wait = max(0.0, deadline - time.monotonic())
            if self._socket.poll(poll_ms(wait, self._outbox)):
                parts = self._socket.recv_multipart(copy=False)
                return parts
            if time.monotonic() >= deadline:
                return None

    def flush(self, timeout_s: float = 0.0) -> None:
        """Send emulated messages that are due (waiting up to `timeout_s` for the rest)."""
        if self._outbox is not None:
            self._outbox.drain(time.monotonic() + timeout_s)

    def close(self) -> None:
        """Close the socket (bounded linger) and the context if this channel owns it."""
        if self._closed:
            return
        self._closed = True
        if self._outbox is not None:
            self._outbox.drain(time.monotonic() + LINGER_MS / 1000)
        self._before_close()
        self._socket.close(linger=LINGER_MS)
        self._release()
        if self._own_context:
            self._context.term()

    def _before_close(self) -> None:
        """Hook for subclasses to detach what hangs on the socket before it closes."""

    def _release(self) -> None:
        """Hook for subclasses to free what they hold before the context ends."""

    def _check_refused(self) -> None:
        """Hook: raise SecurityError if the peer refused the handshake (clients)."""

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
