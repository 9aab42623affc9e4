"""The coordinator's sockets: one DEALER per agent, all polled from one thread.

Every DEALER uses the same identity, so any agent can route a `result` frame to
this coordinator through its own ROUTER (the last pipeline stage answers
directly, not through the first). Request ids are unique across agents, so a
frame is matched to its waiter by id alone; frames nobody waits for yet (results
of other in-flight requests) are kept until asked for.

Dead agents are found two ways while waiting: a process the SDK started that
exited (local clusters), and heartbeats: every `heartbeat_interval_s` each
watched agent is pinged, and one silent for `heartbeat_timeout_s` is declared
unavailable. Sends use `ZMQ_IMMEDIATE` and never block, so a message to a dead
agent fails at once instead of queueing forever.

Not thread-safe: use a cluster from one thread (ZeroMQ sockets are not shareable).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import zmq

from edge_runtime.agent import protocol as p
from edge_runtime.errors import AgentUnavailableError
from edge_runtime.sdk.config import CLIENT_IDENTITY_PREFIX, Timeouts
from transports.errors import ProtocolError
from transports.security import Security
from transports.wire import Frame, decode, encode

log = logging.getLogger(__name__)

# How long closing a DEALER may keep flushing queued frames.
LINGER_MS = 200


@dataclass
class AgentLink:
    """One agent as the coordinator sees it."""

    name: str
    address: str
    public_key: str | None
    socket: zmq.Socket[bytes]
    alive: Callable[[], bool] | None = None  # False once a local process has exited
    last_seen: float = field(default_factory=time.monotonic)
    last_ping: float = 0.0
    dead: bool = False
    answered: bool = False  # has sent us anything since it was connected


class Hub:
    """DEALER sockets to agents, request/reply matching, heartbeats."""

    def __init__(self, security: Security, timeouts: Timeouts) -> None:
        self.security = security
        self.timeouts = timeouts
        self.identity = CLIENT_IDENTITY_PREFIX + f"{os.getpid()}-{os.urandom(4).hex()}".encode()
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._ids = itertools.count(1)
        self._links: dict[str, AgentLink] = {}  # by address
        self._by_socket: dict[zmq.Socket[bytes], AgentLink] = {}
        self._poller = zmq.Poller()
        self._stash: dict[int, Frame] = {}
        self._heartbeat_ids: set[int] = set()
        self._abandoned: set[int] = set()  # requests given up on: drop their late answers

    def next_id(self) -> int:
        return next(self._ids)

    def connect(self, address: str, server_key: str | None, name: str = "",
                alive: Callable[[], bool] | None = None) -> AgentLink:
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, LINGER_MS)
        sock.setsockopt(zmq.IDENTITY, self.identity)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        self.security.apply_client(sock, None if server_key is None else server_key.encode())
        sock.connect(address)
        link = AgentLink(name or address, address, server_key, sock, alive)
        self._links[address] = link
        self._by_socket[sock] = link
        self._poller.register(sock, zmq.POLLIN)
        return link

    def disconnect(self, link: AgentLink) -> None:
        self._poller.unregister(link.socket)
        self._by_socket.pop(link.socket, None)
        self._links.pop(link.address, None)
        link.socket.close()

    def unavailable(self, link: AgentLink, why: str) -> AgentUnavailableError:
        link.dead = True
        return AgentUnavailableError(f"{why} (at {link.address})", agent=link.name)

    # --- sending ---

    def send(self, link: AgentLink, frame: Frame, timeout_s: float = 0.0) -> None:
        """Queue `frame` for `link`; AgentUnavailableError if no connection within `timeout_s`."""
        if link.dead:
            raise self.unavailable(link, "agent was declared unavailable earlier")
        if link.alive is not None and not link.alive():
            raise self.unavailable(link, "agent process exited")
        if link.answered:  # it was connected: a lost connection is a dead or silent agent
            timeout_s = min(timeout_s, self.timeouts.heartbeat_timeout_s)
        if timeout_s > 0 and not link.socket.poll(int(timeout_s * 1000), zmq.POLLOUT):
            if link.answered:
                raise self.unavailable(link, f"connection lost for {timeout_s:g} s")
            raise self.unavailable(
                link, f"no connection within {timeout_s:g} s: the agent is not running, the "
                "address is wrong, or it refused our key (check `edge-runtime keys`)")
        try:
            parts = encode(frame, split_bytes=self.security.split_bytes)
            link.socket.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            raise self.unavailable(link, "the connection to the agent is gone") from None

    def request(self, link: AgentLink, kind: str, meta: dict[str, object] | None = None,
                tensors: dict[str, np.ndarray] | None = None,
                timeout_s: float | None = None) -> Frame:
        """Send one request and wait for its reply (error frames are returned as they are)."""
        timeout = self.timeouts.hello_s if timeout_s is None else timeout_s
        request_id = self.next_id()
        self.send(link, Frame(kind=kind, request_id=request_id, meta=dict(meta or {}),
                              tensors=dict(tensors or {})), timeout_s=timeout)
        # No heartbeat verdict here: a control request (loading a large shard, a link
        # probe) may keep the agent's loop busy longer than the heartbeat timeout.
        return self.wait({request_id}, timeout, [link], f"reply to {kind}", heartbeat=False)

    # --- receiving ---

    def wait(self, request_ids: set[int], timeout_s: float, watch: Iterable[AgentLink],
             what: str = "reply", heartbeat: bool = True) -> Frame:
        """The first frame answering one of `request_ids`; fails fast if a watched agent dies
        (its local process exited, or with `heartbeat`, it missed heartbeats)."""
        watched = list(watch)
        deadline = time.monotonic() + timeout_s
        now = time.monotonic()
        for link in watched:
            link.last_seen = max(link.last_seen, now)
        while True:
            for request_id in request_ids:
                found = self._stash.pop(request_id, None)
                if found is not None:
                    return found
            now = time.monotonic()
            self._check(watched, now, heartbeat)
            if now >= deadline:
                names = ", ".join(link.name for link in watched)
                raise AgentUnavailableError(
                    f"no {what} within {timeout_s:g} s from {names}; raise the timeout if the "
                    "model is slow on this device", agent=watched[-1].name if watched else "")
            wait_s = min(deadline - now, self.timeouts.heartbeat_interval_s)
            for sock, _ in self._poller.poll(max(1, int(wait_s * 1000))):
                self._drain(self._by_socket[sock])

    def _drain(self, link: AgentLink) -> None:
        while True:
            try:
                parts = link.socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            link.last_seen = time.monotonic()
            link.answered = True
            try:
                frame = decode(parts)
            except ProtocolError as error:
                log.warning("malformed frame from %s: %s", link.name, error)
                continue
            if frame.request_id in self._heartbeat_ids:
                self._heartbeat_ids.discard(frame.request_id)
                continue
            if frame.request_id in self._abandoned:
                self._abandoned.discard(frame.request_id)
                continue
            self._stash[frame.request_id] = frame

    def _check(self, watched: list[AgentLink], now: float, heartbeat: bool) -> None:
        for link in watched:
            if link.dead:
                raise self.unavailable(link, "agent was declared unavailable earlier")
            if link.alive is not None and not link.alive():
                raise self.unavailable(link, "agent process exited")
            if not heartbeat:
                continue
            if now - link.last_seen > self.timeouts.heartbeat_timeout_s:
                raise self.unavailable(
                    link, f"agent silent for {now - link.last_seen:.1f} s (no heartbeat)")
            if now - link.last_ping >= self.timeouts.heartbeat_interval_s:
                link.last_ping = now
                request_id = self.next_id()
                self._heartbeat_ids.add(request_id)
                # zmq.Again = disconnected: the silence will trip the heartbeat timeout
                with contextlib.suppress(zmq.Again):
                    link.socket.send_multipart(
                        encode(Frame(kind=p.PING, request_id=request_id)), flags=zmq.NOBLOCK)

    def forget(self, request_ids: Iterable[int]) -> None:
        """Drop answers to requests nobody will wait for (after an error), now or later."""
        for request_id in request_ids:
            if self._stash.pop(request_id, None) is None:
                self._abandoned.add(request_id)

    def close(self) -> None:
        for link in list(self._links.values()):
            self.disconnect(link)
        self._context.term()
