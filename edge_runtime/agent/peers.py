"""Sockets from this agent to other agents (the next pipeline stage), never blocking.

Why this shape: the control loop owns every socket, so one send that blocks freezes
the agent — no heartbeats, SIGTERM ignored. That happened when the next agent
restarted: the cached socket reconnected before any coordinator had re-introduced
this agent's key, the handshake was refused, and a blocking send waited forever.
Now:

- sockets come from the one socket layer (`transports.sockets.open_client`, with
  ZMQ_IMMEDIATE): a frame is only handed to a connection whose handshake succeeded;
- sends are non-blocking; a frame that cannot leave yet waits in a small queue the
  loop retries when the socket becomes writable, and one still waiting after
  `peer_send_s` is dropped and reported (`on_fail`) so the coordinator gets a typed
  error naming the unreachable agent, and the socket is discarded;
- a socket is per (address, deployment id of the next stage): a new deployment after
  a restart starts with a fresh handshake, which its coordinator's `join` has made
  acceptable. Idle sockets are closed.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import zmq

from transports.security import Security
from transports.sockets import open_client

log = logging.getLogger(__name__)

MAX_PEER_SOCKETS = 64
"""Open sockets to other agents at most (least recently used closed first)."""

IDLE_CLOSE_S = 120.0
"""A peer socket unused this long is closed (a deployment that ended leaves its own)."""

MAX_PENDING = 256
"""Frames waiting for one peer at most; past this the oldest is dropped and reported."""


@dataclass
class _Pending:
    parts: Sequence[Any]
    deadline: float
    on_fail: Callable[[str], None]


@dataclass
class _Peer:
    name: str
    address: str
    socket: zmq.Socket[bytes]
    used_at: float
    pending: deque[_Pending] = field(default_factory=deque)


class PeerLinks:
    """The agent's DEALERs to other agents; used from the control-loop thread only."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], security: Security,
                 identity: bytes, send_timeout_s: float, max_frame_bytes: int) -> None:
        self._context = context
        self._security = security
        self._identity = identity
        self._send_timeout_s = send_timeout_s
        self._max_frame_bytes = max_frame_bytes
        self._peers: dict[tuple[str, str], _Peer] = {}

    def send(self, name: str, address: str, public_key: str | None, deployment_id: str,
             parts: Sequence[Any], on_fail: Callable[[str], None]) -> None:
        """Send `parts` to the agent at `address` now if its connection is up, else queue
        them until it is (or until the send timeout, then `on_fail(reason)`)."""
        now = time.monotonic()
        peer = self._peer(name, address, public_key, deployment_id, now)
        peer.used_at = now
        item = _Pending(parts, now + self._send_timeout_s, on_fail)
        if not peer.pending and self._try_send(peer, item):
            return
        peer.pending.append(item)
        if len(peer.pending) > MAX_PENDING:
            dropped = peer.pending.popleft()
            dropped.on_fail(f"more than {MAX_PENDING} frames queued for agent {name}")

    def _peer(self, name: str, address: str, public_key: str | None, deployment_id: str,
              now: float) -> _Peer:
        key = (address, deployment_id)
        peer = self._peers.get(key)
        if peer is None:
            self._close_idle(now)
            # one identity per socket: a ROUTER drops a second connection that reuses an
            # identity it already routes to, so a second deployment's hops to the same
            # agent would vanish while the first one's socket is open
            identity = self._identity + b"/" + hashlib.sha256(
                deployment_id.encode()).hexdigest()[:16].encode()
            socket = open_client(self._context, self._security, address, public_key,
                                 identity=identity, max_frame_bytes=self._max_frame_bytes)
            peer = _Peer(name, address, socket, now)
            self._peers[key] = peer
        return peer

    def _try_send(self, peer: _Peer, item: _Pending) -> bool:
        try:
            peer.socket.send_multipart(item.parts, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return False
        except zmq.ZMQError as error:
            item.on_fail(f"cannot send to agent {peer.name} at {peer.address}: {error}")
        return True

    def waiting(self) -> list[zmq.Socket[bytes]]:
        """Sockets with queued frames (the loop polls them for POLLOUT)."""
        return [peer.socket for peer in self._peers.values() if peer.pending]

    def next_deadline(self) -> float | None:
        deadlines = [peer.pending[0].deadline for peer in self._peers.values() if peer.pending]
        return min(deadlines) if deadlines else None

    def pump(self) -> None:
        """Send what can leave now; fail what waited too long (and drop that socket)."""
        now = time.monotonic()
        for key, peer in list(self._peers.items()):
            while peer.pending and self._try_send(peer, peer.pending[0]):
                peer.pending.popleft()
            if peer.pending and peer.pending[0].deadline <= now:
                reason = (f"agent {peer.name} at {peer.address} accepted no connection for "
                          f"{self._send_timeout_s:g} s (it is down, restarting, or does not "
                          "trust this agent's key yet; redeploy once it is back)")
                log.warning("dropping %d frame(s): %s", len(peer.pending), reason)
                for item in peer.pending:
                    item.on_fail(reason)
                self._discard(key)

    def _discard(self, key: tuple[str, str]) -> None:
        peer = self._peers.pop(key)
        peer.socket.close(linger=0)

    def _close_idle(self, now: float) -> None:
        for key, peer in list(self._peers.items()):
            if not peer.pending and now - peer.used_at > IDLE_CLOSE_S:
                self._discard(key)
        while len(self._peers) >= MAX_PEER_SOCKETS:
            oldest = min(self._peers, key=lambda k: self._peers[k].used_at)
            for item in self._peers[oldest].pending:
                item.on_fail("too many peer connections; this one was closed")
            self._discard(oldest)

    def close(self) -> None:
        for key in list(self._peers):
            self._discard(key)


__all__ = ["IDLE_CLOSE_S", "MAX_PEER_SOCKETS", "PeerLinks"]
