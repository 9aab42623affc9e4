"""Answers to the control requests an agent serves (docs/PROTOCOL.md).

Each handler takes the sender's identity and the frame and returns the reply
frame (or None when the answer comes later, as for `run`). Raising a typed
error answers the sender with an error frame; the agent keeps serving.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import zmq

from devices.links import measure_link
from edge_runtime.agent import deployments
from edge_runtime.agent import protocol as p
from edge_runtime.agent.config import PROBE_ROUNDS, PROBE_TIMEOUT_S
from edge_runtime.errors import (
    AgentUnavailableError,
    ConfigError,
    DeployError,
    InputError,
    MemoryBudgetError,
)
from transports.wire import Frame, decode, encode

if TYPE_CHECKING:
    from edge_runtime.agent.daemon import Agent

log = logging.getLogger(__name__)

# Payload sizes of a link probe: a tiny one for the round trip, a larger one
# whose extra time over the tiny one gives the bandwidth (256 KiB: well above
# timer noise on loopback and a LAN, small enough to keep deploys quick).
PROBE_SMALL_BYTES = 64
PROBE_LARGE_BYTES = 256 * 1024


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


class Handlers:
    """The control requests, dispatched by frame kind."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._table = {
            p.HELLO: self.hello,
            p.PING: self.ping,
            p.HEARTBEAT: self.ping,
            p.PROFILE: self.profile,
            p.LOAD: self.deploy,
            p.JOIN: self.join,
            p.PROBE_LINK: self.probe_link,
            p.HAS_SHARDS: self.has_shards,
            p.PUT_CHUNK: self.put_chunk,
            p.DEPLOY: self.deploy,
            p.UNLOAD: self.unload,
            p.STATUS: self.status,
            p.SHUTDOWN: self.shutdown,
        }

    def dispatch(self, identity: bytes, frame: Frame) -> Frame | None:
        handler = self._table.get(frame.kind)
        if handler is not None:
            return handler(identity, frame)
        deployment_id = frame.meta.get("deployment_id")
        if isinstance(deployment_id, str):
            deployment = self.agent.state.deployments.get(deployment_id)
            if deployment is None:
                raise DeployError(
                    f"no deployment {deployment_id!r} on agent {self.agent.name}; deploy it first"
                )
            deployment.handle(frame.kind, identity, frame)
            return None
        raise InputError(f"unknown request kind {frame.kind!r}")

    def _reply(self, frame: Frame, meta: dict[str, Any] | None = None,
               tensors: dict[str, np.ndarray] | None = None) -> Frame:
        return Frame(kind=p.REPLY, request_id=frame.request_id, sender=self.agent.name,
                     meta=meta or {}, tensors=tensors or {})

    # --- introspection ---

    def hello(self, identity: bytes, frame: Frame) -> Frame:
        return self._reply(frame, {**self.agent.identity, "address": self.agent.address,
                                   "public_key": self.agent.public_key,
                                   "protocol": p.PROTOCOL_VERSION})

    def profile(self, identity: bytes, frame: Frame) -> Frame:
        return self._reply(frame, {"profile": self.agent.identity["profile"]})

    def ping(self, identity: bytes, frame: Frame) -> Frame:
        return self._reply(frame, dict(frame.meta), dict(frame.tensors))

    def status(self, identity: bytes, frame: Frame) -> Frame:
        state = self.agent.state
        budget = self.agent.config.memory_budget
        used = sum(d.memory_bytes for d in state.deployments.values())
        return self._reply(frame, {
            "name": self.agent.name,
            "address": self.agent.address,
            "emulated": self.agent.emulated,
            "preset": self.agent.identity.get("preset"),
            "uptime_s": time.time() - state.started_at,
            "memory_budget": budget,
            "memory_used": used,
            "requests_served": state.requests_served,
            "errors_answered": state.errors_answered,
            "deployments": {k: d.status() for k, d in state.deployments.items()},
        })

    def shutdown(self, identity: bytes, frame: Frame) -> Frame:
        self.agent.request_stop()
        return self._reply(frame, {"stopping": True})

    # --- cluster membership and links ---

    def join(self, identity: bytes, frame: Frame) -> Frame:
        """Allow the public keys of the cluster's other agents (activations, probes)."""
        peers = frame.meta.get("peers", [])
        if not isinstance(peers, list):
            raise InputError("join: 'peers' must be a list of {name, public_key}")
        for peer in peers:
            key = peer.get("public_key") if isinstance(peer, dict) else None
            if key:
                self.agent.allow(str(key))
        return self._reply(frame, {"allowed": len(peers)})

    def probe_link(self, identity: bytes, frame: Frame) -> Frame:
        """Measure round trip and bandwidth from this agent to the agent at `address`.

        Runs in the control loop (blocking it for some milliseconds): probes
        happen at deploy time, before any request of that deployment is in flight.
        """
        address = frame.meta.get("address")
        key = frame.meta.get("public_key")
        name = str(frame.meta.get("name", address))
        if not isinstance(address, str):
            raise InputError("probe_link needs 'address'")
        sock = self.agent.new_peer_socket(address, None if key is None else str(key))
        try:
            link = measure_link(self._pinger(sock, name), self.agent.name, name,
                                small=PROBE_SMALL_BYTES, large=PROBE_LARGE_BYTES,
                                repeats=PROBE_ROUNDS)
        finally:
            sock.close()
        return self._reply(frame, link.to_dict())

    def _pinger(self, sock: zmq.Socket[bytes], name: str) -> Callable[[bytes], None]:
        counter = iter(range(1, 1 << 62))

        def roundtrip(payload: bytes) -> None:
            data = np.frombuffer(payload, dtype=np.uint8)
            sock.send_multipart(encode(Frame(kind=p.PING, request_id=next(counter),
                                             sender=self.agent.name, tensors={"x": data})),
                                copy=False)
            if not sock.poll(int(PROBE_TIMEOUT_S * 1000)):
                raise AgentUnavailableError(
                    f"no answer to a link probe within {PROBE_TIMEOUT_S:g} s", agent=name)
            decode(sock.recv_multipart(copy=False))

        return roundtrip

    # --- shards and deployments ---

    def has_shards(self, identity: bytes, frame: Frame) -> Frame:
        wanted = frame.meta.get("shards", [])
        pairs = [(str(sha), str(ext)) for sha, ext in wanted]
        return self._reply(frame, {"missing": self.agent.cache.missing(pairs)})

    def put_chunk(self, identity: bytes, frame: Frame) -> Frame:
        meta = frame.meta
        data = frame.tensors.get("data")
        if data is None or data.dtype != np.uint8 or data.ndim != 1:
            raise InputError("put_chunk needs a 1-D uint8 tensor 'data'")
        complete = self.agent.cache.put_chunk(
            str(meta["sha256"]), str(meta["ext"]), int(meta["offset"]), int(meta["total"]),
            data.tobytes(),
        )
        return self._reply(frame, {"complete": complete})

    def deploy(self, identity: bytes, frame: Frame) -> Frame:
        meta = frame.meta
        deployment_id = meta.get("deployment_id")
        kind = meta.get("type", "onnx-stage")
        spec = meta.get("spec")
        if not isinstance(deployment_id, str) or not isinstance(spec, dict):
            raise InputError("deploy needs 'deployment_id' (str) and 'spec' (map)")
        state = self.agent.state
        if deployment_id in state.deployments:
            raise DeployError(f"deployment {deployment_id!r} already exists; unload it first")
        from partitioner import admits  # the planner counts with the same rule

        need = deployments.estimate_memory(str(kind), spec, self.agent)
        budget = self.agent.config.memory_budget
        used = sum(d.memory_bytes for d in state.deployments.values())
        if budget is not None and not admits(used, need, budget):
            raise MemoryBudgetError(
                f"agent {self.agent.name}: deployment {deployment_id} needs {_mb(need)} but only "
                f"{_mb(max(budget - used, 0))} of its {_mb(budget)} memory budget is free "
                f"({len(state.deployments)} deployments hold {_mb(used)}); unload a deployment, "
                "raise --memory-budget, or plan with a smaller share for this device"
            )
        start = time.perf_counter()
        deployment = deployments.load(str(kind), deployment_id, spec, self.agent)
        state.deployments[deployment_id] = deployment
        log.info("deployed %s (%s, %s) in %.3f s", deployment_id, kind, _mb(need),
                 time.perf_counter() - start)
        return self._reply(frame, {"memory_bytes": need, "memory_used": used + need,
                                   "memory_budget": budget, "status": deployment.status()})

    def unload(self, identity: bytes, frame: Frame) -> Frame:
        deployment_id = frame.meta.get("deployment_id")
        deployment = self.agent.state.deployments.pop(str(deployment_id), None)
        if deployment is None:
            raise ConfigError(f"no deployment {deployment_id!r} on agent {self.agent.name}")
        deployment.close()
        return self._reply(frame, {"unloaded": deployment_id})
