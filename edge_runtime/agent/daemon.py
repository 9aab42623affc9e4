"""The agent daemon: one ROUTER control socket, a control loop, and its deployments.

Why one thread owns every socket: ZeroMQ sockets are not thread-safe. Stage
workers (`stage.py`) compute in their own threads and hand finished frames to
`Agent.send_to_client` / `send_to_peer`, which queue them and wake the loop
through a pipe; the loop sends them. So the loop never computes, answers pings
while stages run, and a slow stage never blocks another deployment.

The request handlers (hello, deploy, …) live in `handlers.py`; this module is
the socket plumbing, the outbox and the lifecycle (SIGTERM → clean shutdown).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import zmq

from edge_runtime.agent import protocol as p
from edge_runtime.agent.cache import ShardCache
from edge_runtime.agent.config import LOOP_POLL_S, AgentConfig
from edge_runtime.agent.deployments import Deployment
from edge_runtime.agent.handlers import Handlers
from edge_runtime.agent.protocol import Hop
from edge_runtime.errors import EdgeRuntimeError, is_user_error
from transports.errors import ProtocolError
from transports.keys import DEFAULT_KEYS_DIR
from transports.security import Authorizer, Security
from transports.wire import Frame, decode, encode, error_frame, peek_request_id

log = logging.getLogger(__name__)

# How long closing a socket may keep flushing unsent frames (ZMQ_LINGER).
LINGER_MS = 500


@dataclass
class _Outgoing:
    identity: bytes | None  # set: a client of our ROUTER; None: a peer agent (hop)
    hop: Hop | None
    frame: Frame


@dataclass
class AgentState:
    """What handlers may read and change; owned by the control-loop thread."""

    deployments: dict[str, Deployment] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    requests_served: int = 0
    errors_answered: int = 0


class Agent:
    """A running agent. `serve_forever()` blocks until shutdown or SIGTERM."""

    def __init__(self, config: AgentConfig, identity: dict[str, Any]) -> None:
        """`identity`: the hello payload minus run-time fields (profile, caps, name…)."""
        self.config = config
        self._identity = identity
        self._name = str(identity["name"])
        self._threads: int | None = identity.get("threads")
        self._emulated = bool(identity.get("emulated"))
        self._dilate_fn: Any = identity.pop("_dilate", None)
        self._cache = ShardCache(config.cache_dir)
        self.state = AgentState()
        self._stop = threading.Event()
        self._outbox: queue.Queue[_Outgoing] = queue.Queue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.security = self._security(config)
        self._authorizer: Authorizer | None = None
        if not self.security.insecure:
            self._authorizer = Authorizer.acquire(self._context, self.security)
        self._peers: dict[str, zmq.Socket[bytes]] = {}
        self._handlers = Handlers(self)
        self._router = self._context.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.LINGER, LINGER_MS)
        self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.security.apply_server(self._router)
        try:
            self._router.bind(config.listen)
        except zmq.ZMQError as error:
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

    def send_to_client(self, identity: bytes, frame: Frame) -> None:
        self._outbox.put(_Outgoing(identity, None, frame))
        os.write(self._wake_w, b"x")

    def send_to_peer(self, hop: Hop, frame: Frame) -> None:
        self._outbox.put(_Outgoing(None, hop, frame))
        os.write(self._wake_w, b"x")

    def dilate(self, busy_s: float) -> None:
        if self._dilate_fn is not None:
            self._dilate_fn(busy_s)

    def allow(self, public_key: str) -> None:
        if self._authorizer is not None:
            self._authorizer.allow(public_key)

    def peer_socket(self, hop: Hop) -> zmq.Socket[bytes]:
        """A DEALER to another agent's control socket, made on first use and kept."""
        sock = self._peers.get(hop.address)
        if sock is None:
            sock = self._context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, LINGER_MS)
            sock.setsockopt(zmq.IDENTITY, f"agent-{self._name}-{os.getpid()}".encode())
            key = None if hop.public_key is None else hop.public_key.encode()
            self.security.apply_client(sock, key)
            sock.connect(hop.address)
            self._peers[hop.address] = sock
        return sock

    def new_peer_socket(self, address: str, public_key: str | None) -> zmq.Socket[bytes]:
        """A fresh DEALER for a one-off exchange (link probes); the caller closes it."""
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        self.security.apply_client(sock, None if public_key is None else public_key.encode())
        sock.connect(address)
        return sock

    def request_stop(self) -> None:
        self._stop.set()
        os.write(self._wake_w, b"x")

    # --- the loop ---

    def serve_forever(self) -> None:
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        log.info("agent %s listening on %s (%s)", self._name, self.address,
                 "insecure" if self.security.insecure else "CURVE")
        while not self._stop.is_set():
            events = dict(poller.poll(int(LOOP_POLL_S * 1000)))
            if self._router in events:
                for _ in range(64):  # bounded burst so the outbox is not starved
                    try:
                        parts = self._router.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._on_message(parts)
            if self._wake_r in events:
                try:
                    while os.read(self._wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
            self._flush_outbox()
        self._flush_outbox()
        log.info("agent %s stopping", self._name)

    def _on_message(self, parts: list[Any]) -> None:
        identity = bytes(parts[0].bytes if hasattr(parts[0], "bytes") else parts[0])
        try:
            frame = decode(parts[1:])
        except ProtocolError as error:
            log.warning("malformed message from %r: %s", identity, error)
            # the id read best-effort from the header, so the error reaches its request
            request_id = peek_request_id(parts[1:])
            self.state.errors_answered += 1
            self._reply(identity, error_frame(request_id, "ProtocolError", str(error),
                                              sender=self._name))
            return
        try:
            answer = self._handlers.dispatch(identity, frame)
        except Exception as error:  # answer with a typed error; the agent keeps serving
            if not is_user_error(error):
                log.exception("handler for %s failed", frame.kind)
            self.state.errors_answered += 1
            target = identity
            client = frame.meta.get("client") if frame.kind == p.ACTIVATION else None
            if isinstance(client, bytes):
                target = client
            self._reply(
                target,
                error_frame(frame.request_id, type(error).__name__, str(error), sender=self._name,
                            details={"agent": self._name, "kind": frame.kind}),
            )
            return
        self.state.requests_served += 1
        if answer is not None:
            self._reply(identity, answer)

    def _reply(self, identity: bytes, frame: Frame) -> None:
        try:
            parts = encode(frame, split_bytes=self.security.split_bytes)
            self._router.send_multipart([identity, *parts], copy=False)
        except zmq.ZMQError as error:  # EHOSTUNREACH: that client is gone
            log.warning("cannot answer %r (%s): %s", identity, frame.kind, error)
        except ProtocolError as error:
            log.error("cannot encode %s frame: %s", frame.kind, error)

    def _flush_outbox(self) -> None:
        while True:
            try:
                item = self._outbox.get_nowait()
            except queue.Empty:
                return
            if item.identity is not None:
                self._reply(item.identity, item.frame)
                continue
            assert item.hop is not None
            local = self.state.deployments.get(item.hop.deployment_id)
            if local is not None and item.hop.name == self._name:
                # the next stage is on this agent: hand the tensors over, no socket
                try:
                    local.handle(item.frame.kind, b"", item.frame)
                except Exception as error:  # answer the client, as a remote hop would
                    client = item.frame.meta.get("client")
                    if isinstance(client, bytes):
                        self._reply(client, error_frame(
                            item.frame.request_id, type(error).__name__, str(error),
                            sender=self._name, details={"agent": self._name}))
                continue
            try:
                parts = encode(item.frame, split_bytes=self.security.split_bytes)
                self.peer_socket(item.hop).send_multipart(parts, copy=False)
            except (zmq.ZMQError, EdgeRuntimeError, ProtocolError) as error:
                log.error("cannot send %s to %s: %s", item.frame.kind, item.hop.name, error)

    def close(self) -> None:
        """Unload every deployment and release sockets; safe to call twice."""
        for deployment_id, deployment in list(self.state.deployments.items()):
            try:
                deployment.close()
            except Exception:  # closing must go on for the others
                log.exception("closing deployment %s failed", deployment_id)
        self.state.deployments.clear()
        for sock in self._peers.values():
            sock.close()
        self._peers.clear()
        self._router.close()
        if self._authorizer is not None:
            self._authorizer.release()
            self._authorizer = None
        self._context.term()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)


def install_signal_handlers(agent: Agent) -> None:
    """SIGTERM and SIGINT stop the loop cleanly (deployments closed, sockets flushed)."""

    def _stop(signum: int, _frame: object) -> None:
        log.info("signal %d: shutting down", signum)
        agent.request_stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
