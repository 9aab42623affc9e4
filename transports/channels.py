"""Typed request/reply and streaming channels over ZeroMQ ROUTER/DEALER sockets.

A `Server` (ROUTER) receives `Frame`s from many `Client`s (DEALER) and answers
each by its identity; it may also send unsolicited frames to a client it has
heard from (pipeline results arrive at the coordinator from the last stage).
A `Client` sends requests and waits for the reply with the same request id, or
streams with `send`/`recv`.

Why these rules:
- Every receive has a timeout: a dead peer must produce `PeerTimeoutError`,
  never a hang.
- Malformed input never raises out of `Server.recv`: it comes back as an
  `Incoming` carrying the `ProtocolError` (`wire.decode` raises nothing else) and
  the request id read best-effort from the header, so the server answers an error
  frame to the right request and keeps serving; a heartbeat that cannot be
  answered is logged and skipped.
- ZMTP heartbeats detect dead connections; DEALERs reconnect on their own
  (`RECONNECT_IVL_MS`..`RECONNECT_IVL_MAX_MS`); `ROUTER_HANDOVER` lets a
  restarted client reuse its identity.
- Sockets close with a bounded linger and own their context unless given one,
  so a process exits promptly and several agents in one test process never
  share hidden state (no `zmq.Context.instance()`).
Sockets are not thread-safe: use a channel from one thread.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from dataclasses import dataclass, replace

import zmq

from transports.errors import (
    PeerTimeoutError,
    ProtocolError,
    SecurityError,
    TransportError,
)
from transports.handshake import HandshakeWatch
from transports.linkemu import LinkEmulator
from transports.security import Authorizer, Security
from transports.sockets import (
    SEND_TIMEOUT_MS,
    Endpoint,
    bound_address,
)
from transports.wire import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Frame,
    decode,
    encode,
    error_frame,
    peek_request_id,
    raise_if_error,
)

log = logging.getLogger(__name__)


HEARTBEAT_KIND = "heartbeat"
HEARTBEAT_ACK_KIND = "heartbeat_ack"
"""Application heartbeats: a Server answers them itself (`Client.heartbeat`)."""


@dataclass(frozen=True)
class Incoming:
    """A message a Server received: from `peer` (its routing identity), either a
    decoded `frame` or the `error` that made it undecodable. `peer_key` is the
    peer's authenticated CURVE public key (z85), or None on insecure sockets."""

    peer: bytes
    frame: Frame | None
    error: ProtocolError | None = None
    peer_key: str | None = None
    error_request_id: int = 0

    @property
    def request_id(self) -> int:
        """The request id to answer (read best-effort from a malformed header too)."""
        return self.frame.request_id if self.frame is not None else self.error_request_id


class Server(Endpoint):
    """A ROUTER bound at `bind_address` (``tcp://host:0`` picks a free port; see `address`)."""

    def __init__(
        self,
        bind_address: str,
        security: Security,
        *,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        emulation: LinkEmulator | None = None,
        name: str = "",
        compression: str | None = None,
    ) -> None:
        super().__init__(zmq.ROUTER, context, emulation, max_message_bytes, compression)
        self.security = security
        self.name = name
        self.authorizer: Authorizer | None = None
        try:
            self._socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
            self._socket.setsockopt(zmq.ROUTER_HANDOVER, 1)
            self._socket.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
            if not security.insecure:
                self.authorizer = Authorizer.acquire(self._context, security)
            security.apply_server(self._socket)
            self._socket.bind(bind_address)
        except BaseException:
            self.close()
            raise
        self.address = bound_address(self._socket)
        log.debug("server %s bound at %s (secure=%s)", name, self.address, not security.insecure)

    def allow(self, public_key: bytes | str) -> None:
        """Admit a client key at run time (no-op on an insecure server)."""
        if self.authorizer is not None:
            self.authorizer.allow(public_key)

    def recv(self, timeout_s: float) -> Incoming | None:
        """The next message within `timeout_s`, or None. Heartbeats are answered here."""
        deadline = time.monotonic() + timeout_s
        while True:
            parts = self._poll(max(0.0, deadline - time.monotonic()))
            if parts is None:
                return None
            incoming = self._parse(parts)
            frame = incoming.frame
            if frame is not None and frame.kind == HEARTBEAT_KIND:
                reply = Frame(HEARTBEAT_ACK_KIND, frame.request_id, sender=self.name)
                self._try_send(incoming.peer, reply)
                continue
            return incoming

    def _parse(self, parts: list[zmq.Frame]) -> Incoming:
        peer = parts[0].bytes
        key: str | None = None
        if not self.security.insecure:
            try:
                user_id = parts[0].get("User-Id")
                key = user_id if isinstance(user_id, str) else None
            except zmq.ZMQError:
                key = None
        try:
            frame = decode(parts[1:], max_message_bytes=self.max_message_bytes)
        except ProtocolError as error:
            log.warning("malformed message from %r: %s", peer[:64], error.reason[:500])
            return Incoming(peer, None, error, key, peek_request_id(parts[1:]))
        return Incoming(peer, frame, None, key)

    def send(
        self, peer: bytes, frame: Frame, *, compression: str | None = None
    ) -> None:
        """Send `frame` to the client with identity `peer`; PeerUnreachableError if unknown."""
        parts = encode(frame, compression=compression or self.compression,
                       split_bytes=self.security.split_bytes)
        name = peer.decode(errors="replace")
        self._send_parts([peer, *parts], name, f"client {name!s} of {self.address}")

    def reply(self, incoming: Incoming, frame: Frame, *, compression: str | None = None) -> None:
        """Answer `incoming` with `frame`, copying its request id."""
        answer = replace(frame, request_id=incoming.request_id)
        self.send(incoming.peer, answer, compression=compression)

    def reply_error(self, incoming: Incoming, error: BaseException) -> None:
        """Answer `incoming` with an error frame naming `error`'s type and message."""
        message = error.reason if isinstance(error, ProtocolError) else str(error)
        self._try_send(
            incoming.peer,
            error_frame(incoming.request_id, type(error).__name__, message, sender=self.name),
        )

    def _try_send(self, peer: bytes, frame: Frame) -> None:
        """Best-effort answer (heartbeats, errors): a peer that went away, a full queue
        or a socket error is logged, never raised into the receive loop."""
        try:
            self.send(peer, frame)
        except (TransportError, zmq.ZMQError) as error:
            log.info("could not answer %r: %s", peer[:64], error)

    def _release(self) -> None:
        if self.authorizer is not None:
            self.authorizer.release()
            self.authorizer = None


class Client(Endpoint):
    """A DEALER connected to the Server at `address`.

    `server_public_key` may be omitted when `security.trusted_dir` holds a
    certificate with that address. `identity` (bytes) is how the server
    addresses this client; pick a stable one if the server must reach you
    after a reconnect.
    """

    def __init__(
        self,
        address: str,
        security: Security,
        *,
        server_public_key: bytes | None = None,
        identity: bytes | None = None,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        emulation: LinkEmulator | None = None,
        name: str = "",
        compression: str | None = None,
    ) -> None:
        super().__init__(zmq.DEALER, context, emulation, max_message_bytes, compression)
        self.address = address
        self.name = name
        self._ids = itertools.count(1)
        self._pending: deque[Frame] = deque()
        self._abandoned: set[int] = set()
        self._send_timeout_ms = SEND_TIMEOUT_MS
        self._split_bytes = security.split_bytes
        try:
            if identity is not None:
                self._socket.setsockopt(zmq.IDENTITY, identity)
            # queue only on a live connection: a request that timed out against a dead
            # server must not be delivered (and executed) when it comes back
            self._socket.setsockopt(zmq.IMMEDIATE, 1)
            self._socket.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
            if not security.insecure and server_public_key is None:
                server_public_key = security.server_key_for(address)
            security.apply_client(self._socket, server_public_key)
            self._watch: HandshakeWatch | None = HandshakeWatch(self._socket)
            self._public_key = security.keypair.public if security.keypair else None
            self._socket.connect(address)
        except BaseException:
            self.close()
            raise

    def next_request_id(self) -> int:
        return next(self._ids)

    def send(
        self, frame: Frame, *, compression: str | None = None, timeout_s: float | None = None
    ) -> None:
        """Send without waiting for an answer (streaming). Blocks while no connection is
        up, at most `timeout_s` (default `SEND_TIMEOUT_MS`), then raises PeerTimeoutError
        (SecurityError if the server refused this client's key)."""
        limit_ms = SEND_TIMEOUT_MS if timeout_s is None else int(timeout_s * 1000)
        limit_ms = max(1, min(SEND_TIMEOUT_MS, limit_ms))
        if limit_ms != self._send_timeout_ms:
            self._socket.sndtimeo = self._send_timeout_ms = limit_ms
        parts = encode(frame, compression=compression or self.compression,
                       split_bytes=self._split_bytes)
        self._send_parts(parts, self.address, self.address)

    def _recv_frame(self, timeout_s: float) -> Frame | None:
        parts = self._poll(timeout_s)
        if parts is None:
            return None
        return decode(parts, max_message_bytes=self.max_message_bytes)

    def recv(self, timeout_s: float) -> Frame | None:
        """The next frame from the server within `timeout_s` (None on timeout).

        Error frames are returned as frames (`frame.is_error`; `raise_if_error`).
        Raises ProtocolError if the server sent something malformed.
        """
        if self._pending:
            return self._pending.popleft()
        deadline = time.monotonic() + timeout_s
        while True:
            frame = self._recv_frame(max(0.0, deadline - time.monotonic()))
            if frame is None or frame.request_id not in self._abandoned:
                return frame
            self._abandoned.discard(frame.request_id)

    def request(
        self, frame: Frame, timeout_s: float, *, compression: str | None = None
    ) -> Frame:
        """Send `frame` and return the reply with its request id.

        A request id of 0 is replaced by a fresh one. Frames that arrive meanwhile
        with other ids are kept for `recv`. Raises PeerTimeoutError (naming the
        address) after `timeout_s`, RemoteError if the reply is an error frame.
        """
        if frame.request_id == 0:
            frame = replace(frame, request_id=self.next_request_id())
        deadline = time.monotonic() + timeout_s
        try:
            self.send(frame, compression=compression, timeout_s=timeout_s)
        except PeerTimeoutError:
            raise PeerTimeoutError(self.address, timeout_s, f"reply to {frame.kind!r}") from None
        while True:
            reply = self._recv_frame(max(0.0, deadline - time.monotonic()))
            if reply is None:
                self._abandoned.add(frame.request_id)
                self._check_refused()
                raise PeerTimeoutError(self.address, timeout_s, f"reply to {frame.kind!r}")
            if reply.request_id == frame.request_id:
                return raise_if_error(reply, self.address)
            if reply.request_id in self._abandoned:
                self._abandoned.discard(reply.request_id)
                continue
            self._pending.append(reply)

    def _check_refused(self) -> None:
        watch = getattr(self, "_watch", None)
        if watch is None:
            return
        state = watch.poll()
        if state.handshake_failed:
            raise SecurityError(state.explain(self.name or self.address, self.address,
                                              self._public_key))

    def _before_close(self) -> None:
        watch = getattr(self, "_watch", None)
        if watch is not None:
            watch.close()
            self._watch = None

    def heartbeat(self, timeout_s: float) -> float:
        """Round-trip a heartbeat via the server; returns seconds (PeerTimeoutError if silent)."""
        start = time.perf_counter()
        self.request(Frame(HEARTBEAT_KIND, sender=self.name), timeout_s)
        return time.perf_counter() - start
