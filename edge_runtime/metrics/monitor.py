"""`ClusterMonitor`: asks agents how they are, from any thread, without the coordinator.

Why sockets of its own: a coordinator's sockets belong to the thread that owns the
cluster (the server's scheduler thread, an app's main thread), and a status table or a
scrape must neither wait for a forward step nor disturb it. The monitor opens one
DEALER per agent (same keys as the coordinator, so CURVE admits it), and each look
sends every agent a ping (its round trip is the RTT shown), a `status` and, once, a
`profile` at the same time, then collects what comes back within `timeout_s`. An agent
that does not answer is shown as unavailable with the reason; nothing is retried.

Looks are serialised by a lock and cached for `max_age_s`, so a dashboard polled by
several browsers and a Prometheus scrape share one round of requests. When the
monitor watches a coordinator's agents (`of_cluster`), it adds the coordinator's own
view: its health verdict and when it last heard from each agent (else: when the
monitor itself last had an answer, so a stalled agent's silence grows look by look).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq

from edge_runtime.discovery import parse_endpoint
from edge_runtime.errors import ConfigError
from edge_runtime.metrics.snapshot import (
    AgentSnapshot,
    ClusterSnapshot,
    LinkRow,
    agent_from_status,
    profile_summary,
)
from edge_runtime.protocol import (
    Ping,
    ProbeLink,
    ProbeLinkReply,
    Profile,
    ProfileReply,
    Record,
    StatusReply,
)
from edge_runtime.protocol import Status as StatusRequest
from transports.errors import ProtocolError
from transports.keys import DEFAULT_KEYS_DIR
from transports.security import Security
from transports.sockets import open_client
from transports.wire import decode, encode

if TYPE_CHECKING:
    from devices.profile import DeviceProfile
    from edge_runtime.sdk.agents import Agents

DEFAULT_TIMEOUT_S = 2.0
"""How long one look waits for an agent's answers: a control loop answers in
milliseconds even while it computes, so a silent agent for 2 s is down or unreachable."""

DEFAULT_MAX_AGE_S = 1.0
"""A look younger than this is reused (the dashboard polls about once a second)."""

LINKS_MAX_AGE_S = 300.0
"""Agent-to-agent links are measured again after this long (a probe sends ~2.5 MB)."""

PROBE_TIMEOUT_S = 10.0
"""How long one agent may take to measure its link to another (five round trips of
64 B and of 256 KiB; the agent itself gives up on a silent peer after 2 s)."""


@dataclass(frozen=True)
class MonitorTarget:
    """An agent to watch: where it listens and its CURVE key (None under --insecure)."""

    address: str
    public_key: str | None
    name: str = ""
    label: str = ""
    profile: DeviceProfile | None = None


@dataclass
class _Asked:
    target: MonitorTarget
    socket: zmq.Socket[bytes]
    sent_at: float = 0.0
    rtt_s: float | None = None
    status: Mapping[str, Any] | None = None
    error: str | None = None
    pending: int = 0


class ClusterMonitor:
    """Status of a set of agents on demand; `snapshot()` is safe from any thread."""

    def __init__(self, targets: Sequence[MonitorTarget], security: Security, *,
                 timeout_s: float = DEFAULT_TIMEOUT_S,
                 health: Callable[[], Mapping[str, str]] | None = None,
                 last_heard: Callable[[str], float | None] | None = None) -> None:
        if not targets:
            raise ConfigError("nothing to monitor: give at least one agent address")
        self._targets = list(targets)
        self._security = security
        self._timeout_s = timeout_s
        self._health = health
        self._last_heard = last_heard
        self._lock = threading.Lock()
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._identity = f"monitor-{os.getpid()}-{os.urandom(4).hex()}".encode()
        self._sockets: dict[str, zmq.Socket[bytes]] = {}
        self._profiles: dict[str, DeviceProfile] = {
            t.address: t.profile for t in targets if t.profile is not None}
        self._ids = itertools.count(1)
        self._heard: dict[str, float] = {}  # address -> when it last answered (monotonic)
        self._last: ClusterSnapshot | None = None
        self._links: tuple[float, tuple[LinkRow, ...]] | None = None
        self._closed = False

    @classmethod
    def of_cluster(cls, cluster: Agents, timeout_s: float = DEFAULT_TIMEOUT_S
                   ) -> ClusterMonitor:
        """Watch a coordinator's agents, adding its health verdicts and heartbeats."""
        targets = [MonitorTarget(info.address, info.public_key, info.name, info.label,
                                 info.profile) for info in cluster.agents]

        def health() -> Mapping[str, str]:
            return dict(cluster.health.summary())

        def last_heard(name: str) -> float | None:
            try:
                return time.monotonic() - cluster.link(name).last_seen
            except ConfigError:
                return None

        return cls(targets, cluster.hub.security, timeout_s=timeout_s, health=health,
                   last_heard=last_heard)

    @classmethod
    def connect(cls, addresses: Sequence[str], keys: str | os.PathLike[str] | None = None,
                *, insecure: bool = False, timeout_s: float = DEFAULT_TIMEOUT_S
                ) -> ClusterMonitor:
        """Watch agents by address (`host:port` or `tcp://host:port`), each key looked up
        in the keys directory's trusted keys as `connect()` does."""
        if insecure:
            security = Security.insecure_mode()
        else:
            security = Security.from_dir(Path(keys).expanduser() if keys
                                         else DEFAULT_KEYS_DIR.expanduser())
        targets = []
        for entry in addresses:
            address = parse_endpoint(entry)
            key = None if insecure else security.server_key_for(address).decode()
            targets.append(MonitorTarget(address, key))
        return cls(targets, security, timeout_s=timeout_s)

    # --- looking ---

    def snapshot(self, max_age_s: float = DEFAULT_MAX_AGE_S) -> ClusterSnapshot:
        """The cluster now, or as seen less than `max_age_s` ago."""
        with self._lock:
            if self._closed:
                raise ConfigError("this ClusterMonitor is closed")
            last = self._last
            if last is not None and time.time() - last.taken_at < max_age_s:
                return last
            self._last = ClusterSnapshot(time.time(), tuple(self._look()))
            return self._last

    def links(self, max_age_s: float = LINKS_MAX_AGE_S) -> tuple[LinkRow, ...]:
        """Each pair of answering agents' link, as the first of the pair measures it
        (`probe_link`: round trip and bandwidth), measured again after `max_age_s`.
        Agents that were never introduced to each other (no coordinator's `join`, not in
        each other's trusted keys) refuse the probe: that link shows the refusal."""
        snapshot = self.snapshot()
        with self._lock:
            if self._links is not None and time.time() - self._links[0] < max_age_s:
                return self._links[1]
            up = [(t, a) for t, a in zip(self._targets, snapshot.agents, strict=True)
                  if a.available]
            rows = [self._probe(src, dst_target, dst.name)
                    for i, (src, _) in enumerate(up) for dst_target, dst in up[i + 1:]]
            named = {t.address: a.name for t, a in up}
            result = tuple(LinkRow(named[row.source], row.target, row.rtt_s,
                                   row.bandwidth_bytes_per_s, row.error) for row in rows)
            self._links = (time.time(), result)
            return result

    def ask_each(self, request: Record, timeout_s: float | None = None
                 ) -> dict[str, tuple[float, dict[str, Any] | str, float]]:
        """`request` to every agent in turn over the monitor's own sockets (safe from any
        thread, beside a coordinator using its own): per agent address, the wall clock it
        was sent, the reply's meta or why there is none, and the wall clock it came."""
        answers: dict[str, tuple[float, dict[str, Any] | str, float]] = {}
        with self._lock:
            if self._closed:
                raise ConfigError("this ClusterMonitor is closed")
            for target in self._targets:
                sent = time.time()
                answer = self._ask(target, request, timeout_s or self._timeout_s)
                answers[target.address] = (sent, answer, time.time())
        return answers

    def _probe(self, source: MonitorTarget, target: MonitorTarget, name: str) -> LinkRow:
        request = ProbeLink(address=target.address, public_key=target.public_key, name=name)
        answer = self._ask(source, request, PROBE_TIMEOUT_S)
        if isinstance(answer, str):
            return LinkRow(source.address, name, None, None, answer)
        try:
            link = ProbeLinkReply.from_meta(answer).link
        except ProtocolError as error:
            return LinkRow(source.address, name, None, None, error.reason)
        return LinkRow(source.address, name, link.rtt_s, link.bandwidth_bytes_per_s)

    def _ask(self, target: MonitorTarget, request: Record, timeout_s: float
             ) -> dict[str, Any] | str:
        """One request to one agent: its reply's meta, or why there is none."""
        sock = self._socket(target)
        if not sock.poll(int(self._timeout_s * 1000), zmq.POLLOUT):
            return "no connection"
        request_id = next(self._ids)
        try:
            sock.send_multipart(encode(request.frame(request_id)), flags=zmq.NOBLOCK,
                                copy=False)
        except zmq.Again:
            return "the connection to the agent is gone"
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if not sock.poll(max(1, int(left * 1000))):
                break
            try:
                frame = decode(sock.recv_multipart(copy=False))
            except ProtocolError:
                continue
            if frame.request_id != request_id:
                continue  # a late answer to an earlier look
            if frame.is_error:
                return str(frame.meta.get("message", "error"))
            return dict(frame.meta)
        return f"no answer within {timeout_s:g} s"

    def _socket(self, target: MonitorTarget) -> zmq.Socket[bytes]:
        sock = self._sockets.get(target.address)
        if sock is None:
            sock = open_client(self._context, self._security, target.address,
                               target.public_key, identity=self._identity)
            sock.linger = 0
            self._sockets[target.address] = sock
        return sock

    def _look(self) -> list[AgentSnapshot]:
        deadline = time.monotonic() + self._timeout_s
        asked = [_Asked(t, self._socket(t)) for t in self._targets]
        self._wait_connected(asked, deadline)
        by_id: dict[int, tuple[_Asked, str]] = {}
        for item in asked:
            if item.error is None:
                self._send(item, by_id)
        self._collect(asked, by_id, deadline)
        return [self._agent(item) for item in asked]

    def _wait_connected(self, asked: list[_Asked], deadline: float) -> None:
        """Wait (within the deadline) for each handshake: sends need a connection."""
        waiting = list(asked)
        while waiting:
            waiting = [a for a in waiting if not a.socket.poll(0, zmq.POLLOUT)]
            if not waiting:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                for item in waiting:
                    item.error = (f"no connection within {self._timeout_s:g} s (the agent "
                                  "is down, the address is wrong, or it does not trust this "
                                  "machine's key)")
                return
            poller = zmq.Poller()
            for item in waiting:
                poller.register(item.socket, zmq.POLLOUT)
            poller.poll(max(1, int(min(left, 0.05) * 1000)))

    def _send(self, item: _Asked, by_id: dict[int, tuple[_Asked, str]]) -> None:
        requests: list[tuple[str, Any]] = [("ping", Ping()), ("status", StatusRequest())]
        if item.target.address not in self._profiles:
            requests.append(("profile", Profile()))
        item.sent_at = time.monotonic()
        for what, request in requests:
            request_id = next(self._ids)
            try:
                item.socket.send_multipart(encode(request.frame(request_id)),
                                           flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                item.error = "the connection to the agent is gone"
                return
            by_id[request_id] = (item, what)
            item.pending += 1

    def _collect(self, asked: list[_Asked], by_id: dict[int, tuple[_Asked, str]],
                 deadline: float) -> None:
        poller = zmq.Poller()
        for item in asked:
            poller.register(item.socket, zmq.POLLIN)
        while any(a.pending for a in asked):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for sock, _ in poller.poll(max(1, int(left * 1000))):
                self._drain(sock, by_id)
        for item in asked:
            if item.pending and item.error is None:
                item.error = f"no answer within {self._timeout_s:g} s"

    def _drain(self, sock: Any, by_id: dict[int, tuple[_Asked, str]]) -> None:
        while True:
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                frame = decode(parts)
            except ProtocolError:
                continue
            found = by_id.pop(frame.request_id, None)
            if found is None:
                continue  # a late answer to an earlier look
            item, what = found
            item.pending -= 1
            self._heard[item.target.address] = time.monotonic()
            if frame.is_error:
                item.error = str(frame.meta.get("message", "error"))
                continue
            try:
                if what == "ping":
                    item.rtt_s = time.monotonic() - item.sent_at
                elif what == "status":
                    item.status = StatusReply.from_meta(frame.meta).to_meta()
                else:
                    self._profiles[item.target.address] = ProfileReply.from_meta(
                        frame.meta).profile
            except ProtocolError as error:
                item.error = f"malformed {what} reply: {error.reason}"

    def _verdicts(self) -> Mapping[str, str]:
        """The coordinator's health verdicts, read from this thread: a verdict changing
        while it is read is simply read at the next look."""
        if self._health is None:
            return {}
        try:
            return self._health()
        except RuntimeError:  # its table changed size while being read
            return {}

    def _agent(self, item: _Asked) -> AgentSnapshot:
        target = item.target
        name = str((item.status or {}).get("name") or target.name or target.address)
        health = self._verdicts().get(target.name or name)
        heard = self._last_heard(target.name) if self._last_heard and target.name else None
        if heard is None and target.address in self._heard:  # no coordinator: our own look
            heard = time.monotonic() - self._heard[target.address]
        profile = self._profiles.get(target.address)
        common: dict[str, Any] = {
            "rtt_s": item.rtt_s, "profile": profile_summary(profile),
            "last_seen_s": heard,
            "label": target.label or (profile.label() if profile is not None else name)}
        if item.status is None:
            return AgentSnapshot(name=name, address=target.address, available=False,
                                 health=health or "unreachable", error=item.error, **common)
        return agent_from_status(item.status, address=target.address,
                                 health=health or "up", error=item.error, **common)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for sock in self._sockets.values():
                sock.close(linger=0)
            self._sockets.clear()
            self._context.term()

    def __enter__(self) -> ClusterMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["DEFAULT_MAX_AGE_S", "DEFAULT_TIMEOUT_S", "LINKS_MAX_AGE_S", "ClusterMonitor",
           "MonitorTarget"]
