"""Keeping this coordinator's leases alive on its agents, from a background thread.

Why a thread of its own: a `Cluster` is used from one thread and may sit idle for
minutes (a notebook, an app waiting for input) — its deployments must not lapse
meanwhile. So a small thread with its own ZeroMQ context and sockets (sockets are
not shareable between threads) sends `renew` to each agent every third of the lease.
It dies with the process: a crashed, killed or paused app stops renewing, and after
`lease_s` its agents unload what it deployed and revoke the keys it introduced.

The replies say which tracked deployments an agent no longer has, and why (a lapse
while the app was paused, an agent restart); each is logged once as a warning, before
the app's next request meets the `DeploymentGoneError` that says "redeploy".
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass, field

import zmq

from edge_runtime.protocol import Renew, RenewReply
from transports.errors import ProtocolError
from transports.security import Security
from transports.sockets import open_client
from transports.wire import decode, encode

log = logging.getLogger(__name__)

RENEWALS_PER_LEASE = 3
"""Renewals sent per lease period: two can be lost before the lease lapses."""


STOP_CHECK_S = 0.1
"""Longest the keeper waits for a reply without looking at its stop flag, so a closed
cluster stops renewing (and its agents can revoke its keys) promptly."""


@dataclass
class _Agent:
    name: str
    address: str
    server_key: str | None
    socket: zmq.Socket[bytes] | None = None
    deployments: set[str] = field(default_factory=set)
    granted_s: float | None = None  # the lease the agent granted (its hello says)


class LeaseKeeper:
    """Renews `session`'s lease on every agent added, until `close()`."""

    def __init__(self, security: Security, session: str, lease_s: float) -> None:
        self._security = security
        self._session = session
        self._lease_s = lease_s
        self._lock = threading.Lock()
        self._agents: dict[str, _Agent] = {}  # by address
        self._gone: set[str] = set()  # deployment ids already reported gone (logged once)
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by close() and grant(): look at the schedule now
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
        self._thread.start()

    def add(self, name: str, address: str, server_key: str | None) -> None:
        with self._lock:
            self._agents.setdefault(address, _Agent(name, address, server_key)).name = name

    def grant(self, address: str, lease_s: float) -> None:
        """The agent at `address` granted `lease_s` (its bounds may shorten what we asked);
        wakes the keeper, whose next round may now be due sooner."""
        with self._lock:
            agent = self._agents.get(address)
            if agent is not None:
                agent.granted_s = lease_s
        self._wake.set()

    def _interval_s(self) -> float:
        """A third of the shortest lease any agent granted (or of the one asked for)."""
        with self._lock:
            granted = [a.granted_s for a in self._agents.values() if a.granted_s is not None]
        return min([self._lease_s, *granted]) / RENEWALS_PER_LEASE

    def track(self, address: str, deployment_id: str) -> None:
        """Ask `address` about `deployment_id` in every renewal (it belongs to this session)."""
        with self._lock:
            agent = self._agents.get(address)
            if agent is not None:
                agent.deployments.add(deployment_id)

    def untrack(self, deployment_id: str) -> None:
        with self._lock:
            for agent in self._agents.values():
                agent.deployments.discard(deployment_id)
            self._gone.discard(deployment_id)

    def _run(self) -> None:
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        ids = itertools.count(1)
        last_round = time.monotonic()
        try:
            while not self._stop.is_set():
                # rounds on a fixed schedule from the last one: a silent agent's wait for
                # replies (at most half an interval) never delays the next round
                due = last_round + self._interval_s()
                if time.monotonic() < due:
                    self._wake.wait(due - time.monotonic())
                    self._wake.clear()
                    continue  # re-read the schedule (a grant may have shortened it)
                last_round = time.monotonic()
                with self._lock:
                    agents = [(a, tuple(sorted(a.deployments))) for a in self._agents.values()]
                sent = {}
                for agent, deployment_ids in agents:
                    request_id = next(ids)
                    if self._send(context, agent, deployment_ids, request_id):
                        sent[request_id] = agent
                self._collect(sent, last_round + self._interval_s() / 2)
        finally:
            with self._lock:
                for agent in self._agents.values():
                    if agent.socket is not None:
                        agent.socket.close(linger=0)
                        agent.socket = None
            context.term()

    def _send(self, context: zmq.Context[zmq.Socket[bytes]], agent: _Agent,
              deployment_ids: tuple[str, ...], request_id: int) -> bool:
        """Send one renewal; False if the agent is not connected now (down or unreachable:
        a lost renewal is harmless, the next comes a third of a lease later)."""
        try:
            if agent.socket is None:
                agent.socket = open_client(context, self._security, agent.address,
                                           agent.server_key)
            frame = Renew(session=self._session, deployment_ids=deployment_ids,
                          lease_s=self._lease_s).frame(request_id)
            agent.socket.send_multipart(encode(frame), flags=zmq.NOBLOCK)
        except zmq.Again:
            return False
        except zmq.ZMQError as error:
            log.debug("lease renewal on %s failed: %s", agent.name, error)
            return False
        return True

    def _collect(self, sent: dict[int, _Agent], deadline: float) -> None:
        """Read the replies to the renewals just sent, all agents at once (a paused agent
        must not delay the others' renewals), until `deadline` or stop."""
        waiting = dict(sent)
        while waiting and not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            poller = zmq.Poller()
            for agent in waiting.values():
                if agent.socket is not None:
                    poller.register(agent.socket, zmq.POLLIN)
            for socket, _ in poller.poll(int(min(left, STOP_CHECK_S) * 1000) + 1):
                try:
                    reply = decode(socket.recv_multipart())
                    if reply.request_id in waiting and not reply.is_error:
                        self._record(RenewReply.from_meta(reply.meta))
                except (zmq.ZMQError, ProtocolError) as error:
                    log.debug("malformed lease renewal reply: %s", error)
                    continue
                waiting.pop(reply.request_id, None)

    def _record(self, reply: RenewReply) -> None:
        with self._lock:
            for gone in reply.gone:
                if gone.deployment_id not in self._gone:
                    log.warning("%s", gone.reason)
                    self._gone.add(gone.deployment_id)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=2.0)


__all__ = ["RENEWALS_PER_LEASE", "STOP_CHECK_S", "LeaseKeeper"]
