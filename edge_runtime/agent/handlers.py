"""Answers to the control requests an agent serves (docs/PROTOCOL.md).

`dispatch` decodes a frame once into its typed record (`protocol.decode_message`):
a control request goes to its handler, a plain function of (request, tensors) →
reply record; a message naming a deployment goes to that deployment's `handle`
(which answers later, as `run` does). Raising a typed error answers the sender with
an error frame; the agent keeps serving.

Thread safety: the daemon runs slow handlers (deploy, unload, uploads, link probes)
on worker lanes while the loop answers the rest, so every read or change of
`state.deployments` holds `state.lock`. A deploy reserves its memory under the lock
before its slow load and releases the reservation if loading fails, so two deploys
can never both pass the budget check with the same free bytes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import zmq

from devices.links import measure_link
from devices.profile import DeviceProfile
from edge_runtime.agent import deployments
from edge_runtime.agent.deployments import Deployment
from edge_runtime.agent.heap import return_free_memory
from edge_runtime.agent.sessions import SessionLapsed
from edge_runtime.agent.tracing import ring_for
from edge_runtime.errors import (
    AgentUnavailableError,
    DeployError,
    DeploymentGoneError,
    InputError,
    MemoryBudgetError,
)
from edge_runtime.protocol import (
    DEPLOYMENT_MESSAGES,
    PROTOCOL_VERSION,
    Deploy,
    DeployReply,
    Gone,
    HasShards,
    HasShardsReply,
    Hello,
    HelloReply,
    Join,
    JoinReply,
    Ping,
    Pong,
    ProbeLink,
    ProbeLinkReply,
    Profile,
    ProfileReply,
    PutChunk,
    PutChunkReply,
    Record,
    Renew,
    RenewReply,
    Shutdown,
    ShutdownReply,
    StageSpec,
    Status,
    StatusReply,
    TraceGet,
    TraceReply,
    Unload,
    UnloadReply,
    decode_message,
)
from partitioner.memory import admits
from transports.wire import Frame, decode, encode

if TYPE_CHECKING:
    from edge_runtime.agent.daemon import Agent

log = logging.getLogger(__name__)

# Payload sizes of a link probe: a tiny one for the round trip, a larger one
# whose extra time over the tiny one gives the bandwidth (256 KiB: well above
# timer noise on loopback and a LAN, small enough to keep deploys quick).
PROBE_SMALL_BYTES = 64
PROBE_LARGE_BYTES = 256 * 1024

Tensors = dict[str, np.ndarray]
Answer = Record | tuple[Record, Tensors]
"""A handler's reply record, with tensors when the reply carries some (ping)."""


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


class Handlers:
    """The control requests, dispatched by message type."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._reserved: dict[str, int] = {}  # deploys loading now: id -> bytes (state.lock)
        self._table: dict[type[Record], Callable[[Any, Tensors], Answer]] = {
            Hello: self.hello,
            Ping: self.ping,
            Profile: self.profile,
            Join: self.join,
            ProbeLink: self.probe_link,
            HasShards: self.has_shards,
            PutChunk: self.put_chunk,
            Deploy: self.deploy,
            Unload: self.unload,
            Status: self.status,
            Shutdown: self.shutdown,
            Renew: self.renew,
            TraceGet: self.trace,
        }

    def dispatch(self, identity: bytes, frame: Frame) -> Frame | None:
        """Decode `frame` once and act on it; the reply frame, or None when answered later."""
        message = decode_message(frame)
        handler = self._table.get(type(message))
        if handler is not None:
            answer = handler(message, frame.tensors)
            reply, tensors = answer if isinstance(answer, tuple) else (answer, {})
            return reply.frame(frame.request_id, self.agent.name, tensors)
        if isinstance(message, DEPLOYMENT_MESSAGES):
            deployment_id: str = getattr(message, "deployment_id")  # noqa: B009 (all have one)
            self.deployment(deployment_id).handle(identity, frame.request_id, message,
                                                  frame.tensors)
            return None
        raise InputError(f"an agent does not take {frame.kind!r} messages")

    def deployment(self, deployment_id: str) -> Deployment:
        """The deployment `deployment_id`, or the typed error saying why it is not here."""
        with self.agent.state.lock:
            found = self.agent.state.deployments.get(deployment_id)
        if found is None:
            raise self._missing(deployment_id)
        return found

    def _missing(self, deployment_id: str) -> DeployError:
        reason = self.agent.sessions.gone_reason(deployment_id)
        if reason is not None:
            return DeploymentGoneError(f"{reason}; redeploy it")
        # Gone as far as its coordinator can tell: never deployed here, or lost with a
        # restart of this agent; the coordinator re-places it (or the app redeploys).
        return DeploymentGoneError(
            f"no deployment {deployment_id!r} on agent {self.agent.name} (it restarted, or "
            "the deployment was never here); deploy it first")

    def _used(self) -> int:
        """Bytes held or reserved by deployments (call with state.lock held)."""
        held = sum(d.memory_bytes for d in self.agent.state.deployments.values())
        return held + sum(self._reserved.values())

    # --- introspection ---

    def hello(self, message: Hello, tensors: Tensors) -> HelloReply:
        self.agent.sessions.touch(message.session, message.lease_s)
        identity = self.agent.identity
        return HelloReply(
            name=self.agent.name, version=str(identity["version"]), protocol=PROTOCOL_VERSION,
            pid=int(identity["pid"]), profile=DeviceProfile.from_dict(identity["profile"]),
            preset=identity.get("preset"), emulated=self.agent.emulated,
            caps=identity.get("caps"), label=str(identity.get("label") or self.agent.name),
            threads=self.agent.threads, memory_budget=self.agent.config.memory_budget,
            backends=tuple(identity.get("backends", ())), address=self.agent.address,
            public_key=self.agent.public_key,
            lease_s=self.agent.sessions.limits.clamp(message.lease_s), clock=time.time())

    def profile(self, message: Profile, tensors: Tensors) -> ProfileReply:
        return ProfileReply(DeviceProfile.from_dict(self.agent.identity["profile"]))

    def trace(self, message: TraceGet, tensors: Tensors) -> TraceReply:
        """The spans this agent recorded for traced requests (agent/tracing.py), stamped
        with its clock: the coordinator's offset sample for lining them up."""
        ring = ring_for(self.agent.name)
        return TraceReply(self.agent.name, time.time(), ring.spans_for(message.trace_ids),
                          ring.dropped)

    def ping(self, message: Ping, tensors: Tensors) -> tuple[Pong, Tensors]:
        return Pong(), dict(tensors)

    def status(self, message: Status, tensors: Tensors) -> StatusReply:
        state = self.agent.state
        with state.lock:
            held = list(state.deployments.items())
            used = self._used()
        return StatusReply(
            name=self.agent.name, address=self.agent.address, emulated=self.agent.emulated,
            preset=self.agent.identity.get("preset"), uptime_s=time.time() - state.started_at,
            memory_budget=self.agent.config.memory_budget, memory_used=used,
            requests_served=state.requests_served, errors_answered=state.errors_answered,
            deployments={k: self._with_lease(k, d.status()) for k, d in held})

    def _with_lease(self, deployment_id: str, row: dict[str, Any]) -> dict[str, Any]:
        """A deployment's status row plus who owns it and when that lease runs out."""
        lease = self.agent.sessions.lease_of(deployment_id)
        if lease is not None:
            row = {**row, "session": lease[0], "lease_expires_in_s": lease[1]}
        return row

    def shutdown(self, message: Shutdown, tensors: Tensors) -> ShutdownReply:
        self.agent.request_stop()
        return ShutdownReply(stopping=True)

    # --- sessions, cluster membership and links ---

    def join(self, message: Join, tensors: Tensors) -> JoinReply:
        """Admit the public keys of the cluster's other agents (activations, probes) for
        as long as the session's lease holds."""
        keys = [peer.public_key for peer in message.peers if peer.public_key]
        self.agent.sessions.touch(message.session, message.lease_s)
        self.agent.sessions.introduce(message.session, keys)
        return JoinReply(allowed=len(message.peers))

    def renew(self, message: Renew, tensors: Tensors) -> RenewReply:
        gone = self.agent.sessions.renew(message.session, message.deployment_ids,
                                         message.lease_s)
        return RenewReply(gone=tuple(Gone(deployment_id, reason) for deployment_id, reason in gone))

    def probe_link(self, message: ProbeLink, tensors: Tensors) -> ProbeLinkReply:
        """Measure round trip and bandwidth from this agent to the agent at `address`.

        Blocks for the probe's duration: the daemon runs it off the control loop.
        """
        sock = self.agent.new_peer_socket(message.address, message.public_key)
        try:
            link = measure_link(self._pinger(sock, message.name), self.agent.name, message.name,
                                small=PROBE_SMALL_BYTES, large=PROBE_LARGE_BYTES,
                                repeats=self.agent.config.timeouts.probe_rounds)
        finally:
            sock.close()
        return ProbeLinkReply(link)

    def _pinger(self, sock: zmq.Socket[bytes], name: str) -> Callable[[bytes], None]:
        counter = iter(range(1, 1 << 62))
        timeout_s = self.agent.config.timeouts.probe_timeout_s

        def roundtrip(payload: bytes) -> None:
            data = np.frombuffer(payload, dtype=np.uint8)
            try:  # waits up to the socket's send timeout for a connection
                sock.send_multipart(encode(Ping().frame(next(counter), self.agent.name,
                                                        {"x": data})), copy=False)
            except zmq.Again:
                raise AgentUnavailableError(
                    f"no connection for a link probe within {timeout_s:g} s (down, or it does "
                    "not trust this agent's key)", agent=name) from None
            if not sock.poll(int(timeout_s * 1000)):
                raise AgentUnavailableError(
                    f"no answer to a link probe within {timeout_s:g} s", agent=name)
            decode(sock.recv_multipart(copy=False))

        return roundtrip

    # --- shards and deployments ---

    def has_shards(self, message: HasShards, tensors: Tensors) -> HasShardsReply:
        wanted = [(shard.sha256, shard.ext) for shard in message.shards]
        return HasShardsReply(missing=tuple(self.agent.cache.missing(wanted)))

    def put_chunk(self, message: PutChunk, tensors: Tensors) -> PutChunkReply:
        data = tensors.get("data")
        if data is None or data.dtype != np.uint8 or data.ndim != 1:
            raise InputError("put_chunk needs a 1-D uint8 tensor 'data'")
        complete = self.agent.cache.put_chunk(message.sha256, message.ext, message.offset,
                                              message.total, data.tobytes())
        return PutChunkReply(complete=complete)

    def deploy(self, message: Deploy, tensors: Tensors) -> DeployReply:
        """Admit (reserving memory under the lock), load (slow, unlocked), then publish."""
        agent, state, deployment_id = self.agent, self.agent.state, message.deployment_id
        generation = agent.sessions.touch(message.session, message.lease_s)
        hop = message.spec.next_hop if isinstance(message.spec, StageSpec) else None
        if hop is not None and not hop.public_key and not agent.security.insecure:
            raise DeployError(f"deployment {deployment_id}: the next stage's agent {hop.name} "
                              "has no public key, and this agent runs CURVE")
        need = deployments.estimate_memory(message.type, message.spec, agent)
        budget = agent.config.memory_budget
        with state.lock:
            if deployment_id in state.deployments or deployment_id in self._reserved:
                raise DeployError(f"deployment {deployment_id!r} already exists; unload it first")
            used = self._used()
            if budget is not None and not admits(used, need, budget):
                raise MemoryBudgetError(
                    f"agent {agent.name}: deployment {deployment_id} needs {_mb(need)} but only "
                    f"{_mb(max(budget - used, 0))} of its {_mb(budget)} memory budget is free "
                    f"({len(state.deployments)} deployments hold {_mb(used)}); unload a "
                    "deployment, raise --memory-budget, or plan with a smaller share for this "
                    "device")
            self._reserved[deployment_id] = need
        start = time.perf_counter()
        try:
            if isinstance(message.spec, StageSpec):  # the cluster's agents, for activations
                agent.sessions.introduce(message.session, message.spec.allow_keys)
            deployment = deployments.load(message.type, deployment_id, message.spec, agent)
        except BaseException:
            with state.lock:
                self._reserved.pop(deployment_id, None)
            raise
        with state.lock:  # adopt and publish together: a lease sweep sees both or neither
            self._reserved.pop(deployment_id, None)
            try:
                agent.sessions.adopt(message.session, deployment_id, generation)
            except SessionLapsed as lapsed:
                adopted = False
                reason = str(lapsed)
            else:
                adopted = True
                state.deployments[deployment_id] = deployment
        if not adopted:
            deployment.close()
            raise DeploymentGoneError(f"agent {agent.name}: {reason}; redeploy it")
        log.info("deployed %s (%s, %s) in %.3f s", deployment_id, message.type, _mb(need),
                 time.perf_counter() - start)
        return DeployReply(memory_bytes=need, memory_used=used + need, memory_budget=budget,
                           missing_files=deployment.missing_files, status=deployment.status())

    def unload(self, message: Unload, tensors: Tensors) -> UnloadReply:
        with self.agent.state.lock:
            deployment = self.agent.state.deployments.pop(message.deployment_id, None)
        if deployment is None:
            raise self._missing(message.deployment_id)
        self.agent.sessions.release(message.deployment_id)
        try:
            deployment.close()
        finally:  # numpy and onnxruntime free into glibc's arenas: hand the pages back
            return_free_memory()
        return UnloadReply(unloaded=message.deployment_id)
