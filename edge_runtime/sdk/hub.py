"""The coordinator's sockets: one DEALER per agent, all polled from one thread.

Every DEALER uses the same identity, so any agent can route a `result` frame to
this coordinator through its own ROUTER (the last pipeline stage answers
directly, not through the first). Request ids are unique across agents, so a
frame is matched to its waiter by id alone; frames nobody waits for yet (results
of other in-flight requests) are kept until asked for.

Telling dead from stopped from busy from refused, while waiting:

- *dead*: a process the SDK started has exited, or the connection dropped and its
  host refuses a new one (the socket monitor, `transports.handshake`): found within
  milliseconds, without waiting for heartbeats;
- *stopped* (SIGSTOP, a hung host): the connection stays up but heartbeats go
  unanswered for `heartbeat_timeout_s`;
- *busy*: it answers heartbeats (an agent's control loop never computes), so it
  is never declared unavailable; only the request's own timeout ends the wait;
- *refused*: the handshake failed — the agent does not trust this machine's key,
  the key trusted for it is wrong, or one side runs --insecure — reported within
  milliseconds with the exact command that fixes it.

An agent declared unavailable is available again as soon as it answers anything.
Sends use `ZMQ_IMMEDIATE` and never block. The session id names this coordinator to
its agents; `LeaseKeeper` renews its lease from a thread of its own.

Not thread-safe: use a cluster from one thread (ZeroMQ sockets are not shareable).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
from collections.abc import Callable, Collection, Iterable
from typing import Any, TypeVar

import numpy as np
import zmq

from edge_runtime.errors import AgentUnavailableError
from edge_runtime.protocol import Ping
from edge_runtime.protocol.kinds import RESULT
from edge_runtime.sdk.agent_link import AgentLink
from edge_runtime.sdk.config import CLIENT_IDENTITY_PREFIX, Timeouts
from edge_runtime.sdk.leases import LeaseKeeper
from transports.errors import ProtocolError
from transports.handshake import HandshakeStatus, HandshakeWatch
from transports.linkemu import LinkEmulator, Outbox
from transports.security import Security
from transports.sockets import open_client
from transports.wire import Frame, decode, encode

log = logging.getLogger(__name__)

_T = TypeVar("_T")


ZERO_COPY_MIN_BYTES = 1 << 20
"""Tensors smaller than this are copied into the message when sent: pyzmq's zero-copy
send hands each buffer to a garbage-collector thread, ~40 µs for a 128 KB tensor, while
copying it costs ~8 µs; from about 1 MB on, zero-copy wins (pyzmq's own threshold is
64 KB)."""

HEARTBEAT_IDS = 1 << 62
"""Heartbeats use request ids from here up, so a late answer to one is recognised (and
dropped) by its id alone, without remembering every heartbeat ever sent."""


class Hub:
    """DEALER sockets to agents, request/reply matching, heartbeats, leases."""

    def __init__(self, security: Security, timeouts: Timeouts,
                 emulation: LinkEmulator | None = None) -> None:
        self.security = security
        self.timeouts = timeouts
        # Emulated links from this coordinator to its agents (by agent name): delay,
        # jitter, loss, disconnect windows — to test failover on a flaky Wi-Fi here.
        self.emulation = emulation
        self._outbox = Outbox()
        self.session = os.urandom(8).hex()
        self.identity = CLIENT_IDENTITY_PREFIX + f"{os.getpid()}-{self.session}".encode()
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._ids = itertools.count(1)
        self._links: dict[str, AgentLink] = {}  # by address
        self._by_socket: dict[zmq.Socket[bytes], AgentLink] = {}
        self._by_monitor: dict[zmq.Socket[bytes], AgentLink] = {}  # connection events
        self._poller = zmq.Poller()
        self._stash: dict[int, Frame] = {}
        self._partials: dict[int, list[Frame]] = {}  # partial results, by request id
        self._heartbeat_ids = itertools.count(HEARTBEAT_IDS)
        self._abandoned: set[int] = set()  # requests given up on: drop their late answers
        self.leases = LeaseKeeper(security, self.session, timeouts.lease_s)

    def next_id(self) -> int:
        return next(self._ids)

    def reserve_ids(self, count: int) -> int:
        """The first of `count` consecutive request ids, all reserved (the answers of a
        decode run on the agents: its i-th token answers the first + i)."""
        first = next(self._ids)
        self._ids = itertools.count(first + count)
        return first

    def connect(self, address: str, server_key: str | None, name: str = "",
                alive: Callable[[], bool] | None = None) -> AgentLink:
        sock = open_client(self._context, self.security, address, server_key,
                           identity=self.identity, connect=False)
        sock.copy_threshold = ZERO_COPY_MIN_BYTES
        try:
            watch = HandshakeWatch(sock)
            try:
                sock.connect(address)
            except BaseException:
                watch.close()
                raise
        except BaseException:  # a bad address must not leave a socket that blocks term()
            sock.close(linger=0)
            raise
        link = AgentLink(name or address, address, server_key, sock, watch, alive)
        self._links[address] = link
        self._by_socket[sock] = link
        self._poller.register(sock, zmq.POLLIN)
        if watch.events is not None:  # a connection event wakes a wait at once
            self._by_monitor[watch.events] = link
            self._poller.register(watch.events, zmq.POLLIN)
        self.leases.add(link.name, address, server_key)
        return link

    def disconnect(self, link: AgentLink) -> None:
        self._poller.unregister(link.socket)
        if link.watch.events is not None:
            self._poller.unregister(link.watch.events)
            self._by_monitor.pop(link.watch.events, None)
        self._by_socket.pop(link.socket, None)
        self._links.pop(link.address, None)
        link.watch.close()
        link.socket.close()

    def unavailable(self, link: AgentLink, why: str) -> AgentUnavailableError:
        link.dead = True
        return AgentUnavailableError(f"{why} (at {link.address})", agent=link.name)

    # --- sending ---

    def send(self, link: AgentLink, frame: Frame, timeout_s: float = 0.0) -> None:
        """Queue `frame` for `link`; AgentUnavailableError if no connection within
        `timeout_s`, SecurityError at once if the handshake was refused."""
        self.send_all([link], frame, timeout_s)

    def send_all(self, links: Iterable[AgentLink], frame: Frame,
                 timeout_s: float = 0.0) -> None:
        """Queue the same `frame` for every link, encoded once (an LLM step goes to every
        member of its group); errors as `send`, at the first link that has one."""
        parts: list[Any] | None = None
        for link in links:
            self._writable(link, timeout_s)
            if parts is None:
                parts = encode(frame, split_bytes=self.security.split_bytes)
            try:
                self._transmit(link, parts)
            except zmq.Again:
                raise self.unavailable(link, "the connection to the agent is gone") from None

    def _writable(self, link: AgentLink, timeout_s: float) -> None:
        """Return once `link` has a connection to queue on; raise as `send` says."""
        if link.alive is not None and not link.alive():
            raise self.unavailable(link, "agent process exited")
        # connected, the usual case: ZMQ_EVENTS says so without building a poller
        if int(link.socket.get(zmq.EVENTS)) & zmq.POLLOUT:
            return
        if link.answered or link.dead:  # it was connected: a lost connection is a lost agent
            timeout_s = min(timeout_s, self.timeouts.heartbeat_timeout_s)
        deadline = time.monotonic() + timeout_s
        while not link.socket.poll(0, zmq.POLLOUT):
            refused = link.refused(self.security)
            if refused is not None:
                raise refused
            left = deadline - time.monotonic()
            if left <= 0:
                lost = link.connection_lost()
                if link.answered:
                    raise self.unavailable(link, lost or f"connection lost for {timeout_s:g} s")
                raise self.unavailable(
                    link, f"no connection within {timeout_s:g} s: "
                    + (lost or "the agent is not running or the address is wrong"))
            link.socket.poll(int(min(left, 0.05) * 1000) + 1, zmq.POLLOUT)

    def _transmit(self, link: AgentLink, parts: list[Any]) -> None:
        """Hand `parts` to the socket now, or (emulated link) when the link would deliver
        them — or never, when the emulated link loses them."""
        if self.emulation is None:
            link.socket.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
            return
        due = self.emulation.schedule(link.name, sum(len(memoryview(p)) for p in parts))
        if due is None:
            return

        def later() -> None:
            with contextlib.suppress(zmq.Again, zmq.ZMQError):
                link.socket.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)

        self._outbox.push(due, later)
        self._outbox.flush()

    def request(self, link: AgentLink, kind: str, meta: dict[str, object] | None = None,
                tensors: dict[str, np.ndarray] | None = None,
                timeout_s: float | None = None) -> Frame:
        """Send one request and wait for its reply (error frames are returned as they are).

        Heartbeats watch the agent meanwhile: its control loop answers them even while
        it loads a large shard or probes links, so silence means stopped or dead."""
        timeout = self.timeouts.hello_s if timeout_s is None else timeout_s
        request_id = self.next_id()
        self.send(link, Frame(kind=kind, request_id=request_id, meta=dict(meta or {}),
                              tensors=dict(tensors or {})), timeout_s=timeout)
        try:
            return self.wait({request_id}, timeout, [link], f"reply to {kind}")
        except BaseException:
            self.forget([request_id])  # its late answer must not be kept forever
            raise

    # --- receiving ---

    def wait(self, request_ids: set[int], timeout_s: float, watch: Iterable[AgentLink],
             what: str = "reply", heartbeat: bool = True) -> Frame:
        """The first frame answering one of `request_ids`; fails fast if a watched agent
        dies or stops (its local process exited; with `heartbeat`, it missed heartbeats)."""
        def answered() -> Frame | None:
            for request_id in request_ids:
                found = self._stash.pop(request_id, None)
                if found is not None:
                    return found
            return None

        return self._wait_for(answered, timeout_s, watch, what, heartbeat)

    def wait_partials(self, request_id: int, names: Collection[str], timeout_s: float,
                      watch: Iterable[AgentLink]) -> list[Frame]:
        """The partial results of `request_id` (frames of kind `result` with `partial`
        set: stages that sent their model outputs before the request went on) once they
        hold a tensor of every name in `names`; fails as `wait` does."""
        def complete() -> list[Frame] | None:
            frames = self._partials.get(request_id, [])
            held = {name for frame in frames for name in frame.tensors}
            if not held.issuperset(names):
                return None
            return self._partials.pop(request_id, [])

        return self._wait_for(complete, timeout_s, watch, "partial results", True)

    def _wait_for(self, ready: Callable[[], _T | None], timeout_s: float,
                  watch: Iterable[AgentLink], what: str, heartbeat: bool) -> _T:
        """`ready()` once it is not None, reading frames meanwhile; fails as `wait` says."""
        watched = list(watch)
        deadline = time.monotonic() + timeout_s
        for link in watched:
            self._drain(link)  # what arrived while nobody waited (a late heartbeat answer)
        start = time.monotonic()  # "heard during this wait" means after this point
        for link in watched:
            stale = link.ping_unanswered_since
            if stale is not None and start - stale > self.timeouts.heartbeat_timeout_s:
                link.ping_unanswered_since = None  # sent long ago, maybe to a process that
                # restarted since: judge by a fresh heartbeat, not by the idle time
        while True:
            found = ready()
            if found is not None:
                return found
            now = time.monotonic()
            self._check(watched, now, heartbeat)
            if now >= deadline:
                names = ", ".join(link.name for link in watched)
                alive = heartbeat and all(link.last_seen >= start for link in watched)
                raise AgentUnavailableError(
                    f"no {what} within {timeout_s:g} s from {names}" + (
                        " (it answers heartbeats, so it is alive but busy); raise the timeout "
                        "if the model is slow on this device" if alive else ""),
                    agent=watched[-1].name if watched else "")
            wait_s = min(deadline - now, self.timeouts.heartbeat_interval_s)
            if self.emulation is not None:
                self._outbox.flush()
                wait_s = self._outbox.poll_timeout(now + wait_s)
            for sock, _ in self._poller.poll(max(1, int(wait_s * 1000))):
                ready_link = self._by_socket.get(sock)
                if ready_link is not None:
                    self._drain(ready_link)
                else:  # a connection event: read it now, as an unread one would wake
                    # every poll (level-triggered); `_check` acts on it at the loop's top
                    self._by_monitor[sock].watch.poll()

    def _drain(self, link: AgentLink) -> None:
        sock = link.socket
        # ZMQ_EVENTS, not a recv that raises zmq.Again: an exception per call costs more
        while int(sock.get(zmq.EVENTS)) & zmq.POLLIN:
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            link.heard(time.monotonic())
            if link.dead:
                log.info("agent %s answers again; it is available", link.name)
                link.dead = False
            try:
                frame = decode(parts)
            except ProtocolError as error:
                log.warning("malformed frame from %s: %s", link.name, error)
                continue
            if frame.request_id >= HEARTBEAT_IDS:
                continue
            if frame.kind == RESULT and frame.meta.get("partial") is True:
                # a stage's outputs sent before its request went on: kept apart, so the
                # answer itself is still the one frame `wait` returns for the id
                if frame.request_id not in self._abandoned:
                    self._partials.setdefault(frame.request_id, []).append(frame)
                continue
            if frame.request_id in self._abandoned:
                self._abandoned.discard(frame.request_id)
                continue
            self._stash[frame.request_id] = frame

    def _check(self, watched: list[AgentLink], now: float, heartbeat: bool) -> None:
        for link in watched:
            if link.alive is not None and not link.alive():
                raise self.unavailable(link, "agent process exited")
            refused = link.refused(self.security)
            if refused is not None:
                raise refused
            if (link.answered and link.watch.state.status is HandshakeStatus.UNREACHABLE
                    and not link.socket.poll(0, zmq.POLLOUT)):
                # it answered before, and now its host refuses connections: the process is
                # gone (a Wi-Fi drop times out instead; that is left to the heartbeats). A
                # writable socket has a live connection: a reconnect newer than the
                # monitor's last event.
                lost = link.connection_lost()
                raise self.unavailable(link, f"its host refuses connections ({lost})")
            if not heartbeat:
                continue
            since = link.ping_unanswered_since
            if since is not None and now - since > self.timeouts.heartbeat_timeout_s:
                silent = now - since
                lost = link.connection_lost()
                state = link.watch.state
                if lost:
                    why = f"connection lost and agent silent for {silent:.1f} s ({lost})"
                elif state.handshake_failed:  # answered before; now its handshake fails
                    pair = self.security.keypair
                    why = (f"agent silent for {silent:.1f} s and its handshake fails: "
                           + state.explain(link.name, link.address,
                                           None if pair is None else pair.public))
                else:
                    why = (f"agent stopped answering heartbeats {silent:.1f} s ago while its "
                           "connection stayed up (the process is paused or hung)")
                raise self.unavailable(link, why)
            if now - link.last_ping >= self.timeouts.heartbeat_interval_s:
                link.last_ping = now
                if link.ping_unanswered_since is None:
                    link.ping_unanswered_since = now
                # not connected: no answer comes, and the silence trips the timeout
                with contextlib.suppress(zmq.Again):
                    self._transmit(link, encode(Ping().frame(next(self._heartbeat_ids))))

    def take(self, request_id: int, link: AgentLink) -> Frame | None:
        """The answer to `request_id` if it has arrived from `link`, without waiting."""
        self._drain(link)
        return self._stash.pop(request_id, None)

    def forget(self, request_ids: Iterable[int]) -> None:
        """Drop answers to requests nobody will wait for (after an error), now or later."""
        for request_id in request_ids:
            self._partials.pop(request_id, None)
            if self._stash.pop(request_id, None) is None:
                self._abandoned.add(request_id)

    def close(self) -> None:
        self.leases.close()
        for link in list(self._links.values()):
            self.disconnect(link)
        self._context.term()
