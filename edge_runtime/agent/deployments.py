"""The registry of deployment types an agent can host.

A deployment type is a module with two functions, both given the `deploy`
message's spec record, already validated (`edge_runtime.protocol.DEPLOYMENT_SPECS`):

- `estimate_memory(spec, ctx: AgentContext) -> int` — bytes it will hold,
  checked against the agent's memory budget *before* anything is loaded;
- `load(deployment_id: str, spec, ctx: AgentContext) -> Deployment`.

"onnx-stage" (one pipeline stage, `stage.py`) is the first; the LLM's
tensor-parallel shard adds one module and one line in `TYPES`, not a change
to the control loop: every message that names a `deployment_id`
(`protocol.DEPLOYMENT_MESSAGES`) is decoded once and handed to that
deployment's `handle()`.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any, Protocol

import numpy as np

from edge_runtime.agent.cache import ShardCache
from edge_runtime.agent.config import AgentConfig
from edge_runtime.agent.heap import return_free_memory
from edge_runtime.errors import DeployError
from edge_runtime.protocol import Hop, Message, Record, register_spec
from transports.wire import Frame

log = logging.getLogger(__name__)

# deployment kind -> module implementing `estimate_memory` and `load`
TYPES: dict[str, str] = {
    "onnx-stage": "edge_runtime.agent.stage",
    "llm-shard": "edge_runtime.agent.llm_shard",
    "llm-stage": "edge_runtime.agent.llm_stage",  # a stage of a pipelined LLM
}


def register(kind: str, module: str, spec: type[Record]) -> None:
    """Add a deployment type at run time (e.g. from a plugin) with its spec record."""
    TYPES[kind] = module
    register_spec(kind, spec)


class AgentContext(Protocol):
    """What a deployment may use of the agent that hosts it. Every method is thread-safe."""

    @property
    def name(self) -> str: ...

    @property
    def threads(self) -> int | None: ...

    @property
    def emulated(self) -> bool: ...

    @property
    def cache(self) -> ShardCache: ...

    @property
    def config(self) -> AgentConfig:
        """What the agent was started with (e.g. the checkpoint dirs it may read)."""
        ...

    def send_to_client(self, identity: bytes, frame: Frame) -> None:
        """Queue `frame` for the client (coordinator) connected with `identity`."""
        ...

    def send_to_peer(self, hop: Hop, frame: Frame) -> None:
        """Queue `frame` for another agent's control socket."""
        ...

    def dilate(self, busy_s: float) -> None:
        """Sleep so `busy_s` of compute looks like the emulated device's (no-op when real)."""
        ...


class Deployment(Protocol):
    """A loaded deployment; `handle` must not block the control loop."""

    @property
    def memory_bytes(self) -> int: ...

    @property
    def missing_files(self) -> tuple[str, ...]:
        """Files the deployment waits for before it can load (the deploy reply lists them)."""
        ...

    def handle(self, sender: bytes, request_id: int, message: Message,
               tensors: dict[str, np.ndarray]) -> None:
        """Take one decoded message naming this deployment; answer through the context."""
        ...

    def status(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


def _module(kind: str) -> Any:
    if kind not in TYPES:
        raise DeployError(f"unknown deployment type {kind!r}; this agent serves {sorted(TYPES)}")
    return importlib.import_module(TYPES[kind])


def estimate_memory(kind: str, spec: Record, ctx: AgentContext) -> int:
    return int(_module(kind).estimate_memory(spec, ctx))


def load(kind: str, deployment_id: str, spec: Record, ctx: AgentContext) -> Deployment:
    deployment: Deployment = _module(kind).load(deployment_id, spec, ctx)
    return deployment


def unload(deployment_id: str, deployment: Deployment) -> None:
    """Close a deployment taken out of the agent and give its memory back to the OS.

    Used by an explicit `unload`, a lapsed lease and shutdown alike. Never raises: a
    deployment that fails to close is logged, and the others still close."""
    try:
        deployment.close()
    except Exception:
        log.exception("closing deployment %s failed", deployment_id)
    return_free_memory()
