"""The agent daemon: one ROUTER control socket, a control loop, and its deployments.

Why one thread owns every socket: ZeroMQ sockets are not thread-safe. Stage
workers (`stage.py`) compute in their own threads and hand finished frames to
`Agent.send_to_client` / `send_to_peer`, which queue them and wake the loop
through a pipe; the loop sends them (a frame handed over on the loop itself is
sent at once). So the loop answers pings while stages run, and a slow stage never
blocks another deployment; only a stage measured to take a few ms runs on the loop
when it is idle (`stage.INLINE_MAX_S`), saving two thread hand-offs per request.

The loop never waits either: slow control requests (deploy, unload, uploads, link
probes) run on worker lanes (`lanes.py`) that answer when done; sends to clients and
to peer agents are non-blocking (`peers.py`); and one message, however malformed or
hostile, can only ever earn its sender an error frame — any exception raised while
handling it is caught (`requests.py`, which routes each message to the loop or a lane).
Leases (`sessions.py`) are swept here: a deployment whose coordinator went silent is
unloaded and the keys it introduced are revoked.

The request handlers (hello, deploy, …) live in `handlers.py`, the queue other
threads hand frames to in `loop_outbox.py`, the signal handlers in `startup.py`; this
module is the socket plumbing and the lifecycle.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

from edge_runtime.agent.cache import ShardCache, UploadQuota
from edge_runtime.agent.config import AgentConfig
from edge_runtime.agent.deployments import Deployment
from edge_runtime.agent.handlers import Handlers
from edge_runtime.agent.loop_outbox import LoopOutbox, Outgoing
from edge_runtime.agent.peers import PeerLinks
from edge_runtime.agent.reaper import LeaseReaper
from edge_runtime.agent.requests import Requests, clip
from edge_runtime.agent.sessions import LeaseLimits, Sessions
from edge_runtime.errors import (
    AgentUnavailableError,
    EdgeRuntimeError,
)
from edge_runtime.metrics.counters import WireCounters
from edge_runtime.protocol import Hop, Status
from transports.errors import ProtocolError
from transports.keys import DEFAULT_KEYS_DIR
from transports.security import Authorizer, Security
from transports.sockets import open_client, open_server
from transports.wire import Frame, encode

log = logging.getLogger(__name__)

BURST = 64
"""Messages handled per wake-up before the outbox is flushed, so replies are not starved."""

COPY_BELOW_BYTES = 1 << 20
"""Reply frames smaller than this are copied into the message when sent: pyzmq's
zero-copy send (its default from 64 KB) wakes a garbage-collector thread per frame that
competes for the GIL and a core (~40 µs for a 128 KB result), while the copy costs
~10 µs; from about 1 MB on, zero-copy wins (the SDK's hub uses the same threshold)."""

_ON_SERVE: list[Callable[[Agent], object]] = []


def on_serve(hook: Callable[[Agent], object]) -> None:
    """Call `hook(agent)` when an agent of this process starts serving, before its loop:
    how `edge-runtime agent --metrics-port` starts its exporter (a failing hook stops
    the agent, so a metrics port in use fails at start, not silently)."""
    _ON_SERVE.append(hook)


@dataclass
class AgentState:
    """What handlers may read and change; owned by the control-loop thread."""

    deployments: dict[str, Deployment] = field(default_factory=dict)
    # guards `deployments` (and memory reservations): handlers run on lanes too
    lock: threading.Lock = field(default_factory=threading.Lock)
    started_at: float = field(default_factory=time.time)
    requests_served: int = 0
    errors_answered: int = 0
    # by message kind and peer, for metrics (`edge_runtime.metrics`)
    wire: WireCounters = field(default_factory=WireCounters)


class Agent:
    """A running agent. `serve_forever()` blocks until shutdown or SIGTERM."""

    def __init__(self, config: AgentConfig, identity: dict[str, Any]) -> None:
        """`identity`: the hello payload minus run-time fields (profile, caps, name…)."""
        self.config = config
        timeouts = config.timeouts
        self._identity = identity
        self._name = str(identity["name"])
        self._threads: int | None = identity.get("threads")
        self._emulated = bool(identity.get("emulated"))
        self._dilate_fn: Any = identity.pop("_dilate", None)
        self._cache = ShardCache(
            config.cache_dir, UploadQuota(ttl_s=timeouts.partial_upload_ttl_s))
        self.state = AgentState()
        self._stop = threading.Event()
        self._outbox = LoopOutbox()  # what other threads hand the loop to send
        # the control loop's thread while it serves: frames handed over on it are sent
        # at once (no queue, no wake-up through the pipe)
        self._loop_thread: int | None = None
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.security = self._security(config)
        self._authorizer: Authorizer | None = None
        if not self.security.insecure:
            self._authorizer = Authorizer.acquire(self._context, self.security)
        limits = LeaseLimits(timeouts.lease_default_s, timeouts.lease_min_s,
                             timeouts.lease_max_s)
        self.sessions = Sessions(limits, self._name, allow=self.allow)
        self._peers = PeerLinks(self._context, self.security,
                                f"agent-{self._name}-{os.getpid()}".encode(),
                                timeouts.peer_send_s, timeouts.max_message_bytes)
        self._reaper = LeaseReaper(self.sessions, self._take, self._revoke,
                                   timeouts.lease_sweep_s)
        self._handlers = Handlers(self)
        self._requests = Requests(self._name, self.state, self._handlers, timeouts,
                                  self.send_to_client, self._reply)
        self._router: zmq.Socket[bytes] | None = None
        try:
            self._router = open_server(self._context, self.security, config.listen,
                                       max_frame_bytes=timeouts.max_message_bytes)
        except zmq.ZMQError as error:
            self._router = None
            self.close()
            raise EdgeRuntimeError(
                f"cannot listen on {config.listen}: {error}; pick another port with --listen"
            ) from error
        self.address = str(self._router.get_string(zmq.LAST_ENDPOINT))

    @staticmethod
    def _security(config: AgentConfig) -> Security:
        if config.insecure:
            return Security.insecure_mode()
        keys_dir = config.keys_dir or DEFAULT_KEYS_DIR.expanduser()
        return Security.from_dir(keys_dir)

    # --- what deployments and handlers use (AgentContext) ---

    @property
    def name(self) -> str:
        return self._name

    @property
    def threads(self) -> int | None:
        return self._threads

    @property
    def emulated(self) -> bool:
        return self._emulated

    @property
    def cache(self) -> ShardCache:
        return self._cache

    @property
    def identity(self) -> dict[str, Any]:
        return self._identity

    @property
    def public_key(self) -> str | None:
        pair = self.security.keypair
        return None if pair is None else pair.public.decode()

    @property
    def wire(self) -> WireCounters:
        return self.state.wire

    def status_map(self) -> dict[str, Any]:
        """The status a coordinator's `status` request gets, as a map (for metrics)."""
        return self._handlers.status(Status(), {}).to_meta()

    def send_to_client(self, identity: bytes, frame: Frame) -> None:
        if threading.get_ident() == self._loop_thread:  # on the loop: send it now
            if self._outbox:
                self._flush_outbox()  # what workers queued before goes first
            self._reply(identity, frame)
            return
        self._outbox.put(Outgoing(identity, None, frame))

    def send_to_peer(self, hop: Hop, frame: Frame) -> None:
        if threading.get_ident() == self._loop_thread:
            if self._outbox:
                self._flush_outbox()
            self._forward(hop, frame)
            return
        self._outbox.put(Outgoing(None, hop, frame))

    def dilate(self, busy_s: float) -> None:
        if self._dilate_fn is not None:
            self._dilate_fn(busy_s)

    def allow(self, public_key: str) -> None:
        if self._authorizer is not None:
            self._authorizer.allow(public_key)

    def new_peer_socket(self, address: str, public_key: str | None) -> zmq.Socket[bytes]:
        """A fresh DEALER for a one-off exchange off the loop (link probes); the caller
        closes it. Its sends wait at most `probe_timeout_s` for a connection."""
        sock = open_client(self._context, self.security, address, public_key,
                           max_frame_bytes=self.config.timeouts.max_message_bytes)
        sock.sndtimeo = int(self.config.timeouts.probe_timeout_s * 1000)
        sock.linger = 0
        return sock

    def request_stop(self) -> None:
        self._stop.set()
        self._outbox.wake()

    # --- the loop ---

    def serve_forever(self) -> None:
        assert self._router is not None
        log.info("agent %s listening on %s (%s)", self._name, self.address,
                 "insecure" if self.security.insecure else "CURVE")
        for hook in _ON_SERVE:
            hook(self)
        self._loop_thread = threading.get_ident()
        router = self._router
        router.copy_threshold = COPY_BELOW_BYTES
        poller = zmq.Poller()  # kept across turns; only peers waiting to send come and go
        poller.register(router, zmq.POLLIN)
        poller.register(self._outbox.wake_fd, zmq.POLLIN)
        polled_peers: set[zmq.Socket[bytes]] = set()
        while not self._stop.is_set():
            waiting = set(self._peers.waiting())
            if waiting != polled_peers:
                for sock in polled_peers - waiting:
                    poller.unregister(sock)
                for sock in waiting - polled_peers:
                    poller.register(sock, zmq.POLLOUT)
                polled_peers = waiting
            events = dict(poller.poll(self._poll_ms()))
            if router in events:
                # ZMQ_EVENTS, not a recv that raises zmq.Again: an exception per turn
                # costs more than the check
                for _ in range(BURST):
                    if not int(router.get(zmq.EVENTS)) & zmq.POLLIN:
                        break
                    try:
                        parts = router.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._requests.on_message(parts)
                    del parts  # a refused oversized message must not outlive its turn
            if self._outbox.wake_fd in events:  # every put wakes: nothing queued otherwise
                self._outbox.drain_wake()
                self._step(self._flush_outbox)
            self._step(self._peers.pump)
            self._step(self._reaper.sweep)
        self._loop_thread = None
        self._flush_outbox()
        log.info("agent %s stopping", self._name)

    @staticmethod
    def _step(step: Callable[[], object]) -> None:
        try:
            step()
        except Exception:  # a bug in one step must not end the agent
            log.exception("agent loop step %s failed", getattr(step, "__name__", step))

    def _poll_ms(self) -> int:
        wait = self.config.timeouts.loop_poll_s
        deadline = self._peers.next_deadline()
        if deadline is not None:
            wait = min(wait, max(0.0, deadline - time.monotonic()))
        return max(1, int(wait * 1000))

    def _reply(self, identity: bytes, frame: Frame) -> None:
        """Send to a client of the ROUTER now, or drop (never block the loop)."""
        assert self._router is not None
        try:
            parts = encode(frame, split_bytes=self.security.split_bytes)
            self._router.send_multipart([identity, *parts], flags=zmq.NOBLOCK, copy=False)
            self.state.wire.sent(identity, sum(memoryview(part).nbytes for part in parts))
        except zmq.Again:  # that client's queue is full: it stopped reading
            log.warning("dropping a %s frame for %s: its queue is full", frame.kind,
                        clip(identity))
        except zmq.ZMQError as error:  # EHOSTUNREACH: that client is gone
            log.warning("cannot answer %s (%s): %s", clip(identity), frame.kind, error)
        except ProtocolError as error:
            log.error("cannot encode %s frame: %s", frame.kind, error)

    def _flush_outbox(self) -> None:
        for item in self._outbox.pending():
            if item.identity is not None:
                self._reply(item.identity, item.frame)
                continue
            assert item.hop is not None
            self._forward(item.hop, item.frame)

    def _forward(self, hop: Hop, frame: Frame) -> None:
        """Hand `frame` to the next stage: in process when it is here, else over a peer socket."""
        local = self.state.deployments.get(hop.deployment_id)
        if local is not None and hop.name == self._name:
            try:
                self._handlers.dispatch(b"", frame)
            except Exception as error:  # answer the client, as a remote hop would
                self._requests.answer_error(b"", frame, error)
            return
        try:
            parts = encode(frame, split_bytes=self.security.split_bytes)
        except ProtocolError as error:
            self._requests.answer_error(b"", frame, error)
            return

        def failed(reason: str) -> None:
            self._requests.answer_error(b"", frame, AgentUnavailableError(reason, agent=hop.name))

        self.state.wire.sent(hop.name, sum(memoryview(part).nbytes for part in parts))
        try:
            self._peers.send(hop.name, hop.address, hop.public_key, hop.deployment_id, parts,
                             failed)
        except Exception as error:  # a bad address or key in the hop: that request fails
            failed(f"cannot connect to {clip(hop.address)}: {clip(error)}")

    def _take(self, deployment_id: str) -> Deployment | None:
        """Remove a deployment from this agent (the lease reaper closes it)."""
        with self.state.lock:
            return self.state.deployments.pop(deployment_id, None)

    def _revoke(self, public_key: str) -> None:
        if self._authorizer is not None:
            self._authorizer.revoke(public_key)

    def close(self) -> None:
        """Unload every deployment and release sockets; safe to call twice."""
        self._requests.close()
        self._reaper.close()
        for deployment_id, deployment in list(self.state.deployments.items()):
            try:
                deployment.close()
            except Exception:  # closing must go on for the others
                log.exception("closing deployment %s failed", deployment_id)
        self.state.deployments.clear()
        self._peers.close()
        if self._router is not None:
            self._router.close()
            self._router = None
        if self._authorizer is not None:
            self._authorizer.release()
            self._authorizer = None
        self._context.term()
        self._outbox.close()
