"""The one socket layer: options, timeouts, opening and closing every ZeroMQ socket.

The agent's control socket and its sockets to peer agents, the coordinator's sockets
to agents, channels and collectives all get their sockets here, so one place defines
how they behave: linger, heartbeats, reconnect backoff, send timeout, handshake time
limit and the largest frame accepted before authentication. Also the `Endpoint` base
that owns a socket, its context and an emulated-link outbox. Every timeout is
documented where it is defined.
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
from transports.security import Security
from transports.wire import DEFAULT_MAX_MESSAGE_BYTES, Buffer

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


HANDSHAKE_IVL_MS = 5000
"""A peer that has not finished the ZMTP/CURVE handshake 5 s after connecting is dropped
(libzmq's default is 30 s): a half-open or trickling handshake holds no memory for long."""

MAX_FRAME_BYTES = DEFAULT_MAX_MESSAGE_BYTES
"""Default ZMQ_MAXMSGSIZE: libzmq drops a peer that declares a larger frame *before*
reading it — also during the handshake, before the peer is authenticated — so a
stranger cannot make a socket buffer a gigabyte. Receivers that expect less set less."""


def configure_socket(socket: zmq.Socket[bytes], *,
                     max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
    """Options every socket of this project gets (see the constants above)."""
    socket.linger = LINGER_MS
    socket.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    socket.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TIMEOUT_MS)
    socket.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
    socket.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
    socket.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_IVL_MS)
    socket.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes)
    socket.sndtimeo = SEND_TIMEOUT_MS


def open_server(context: zmq.Context[zmq.Socket[bytes]], security: Security, address: str,
                *, max_frame_bytes: int = MAX_FRAME_BYTES) -> zmq.Socket[bytes]:
    """A bound ROUTER with the project's options and `security` (CURVE server unless
    insecure; the context needs a running `Authorizer`). Sends to a client that is gone
    fail at once (ROUTER_MANDATORY) instead of being dropped silently; a reconnecting
    client with the same identity takes its slot over (ROUTER_HANDOVER).
    Raises zmq.ZMQError if the address cannot be bound (the socket is closed first)."""
    socket = context.socket(zmq.ROUTER)
    try:
        configure_socket(socket, max_frame_bytes=max_frame_bytes)
        socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        socket.setsockopt(zmq.ROUTER_HANDOVER, 1)
        security.apply_server(socket)
        socket.bind(address)
    except BaseException:
        socket.close(linger=0)
        raise
    return socket


def open_client(context: zmq.Context[zmq.Socket[bytes]], security: Security, address: str,
                server_key: bytes | str | None, *, identity: bytes | None = None,
                max_frame_bytes: int = MAX_FRAME_BYTES,
                connect: bool = True) -> zmq.Socket[bytes]:
    """A connected DEALER with the project's options, for a coordinator or a peer agent.

    ZMQ_IMMEDIATE: messages are queued only on a connection whose handshake succeeded, so
    a send to a peer that is down, restarting or refusing our key fails with zmq.Again
    (callers send with NOBLOCK and decide) instead of waiting in a queue forever; and a
    new socket is a new handshake, so callers drop a socket whose peer restarted.
    `connect=False` leaves the connecting to the caller (to attach a monitor first).
    """
    socket = context.socket(zmq.DEALER)
    try:
        configure_socket(socket, max_frame_bytes=max_frame_bytes)
        socket.setsockopt(zmq.IMMEDIATE, 1)
        if identity is not None:
            socket.setsockopt(zmq.IDENTITY, identity)
        key = server_key.encode() if isinstance(server_key, str) else server_key
        security.apply_client(socket, key)
        if connect:
            socket.connect(address)
    except BaseException:
        socket.close(linger=0)
        raise
    return socket


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
