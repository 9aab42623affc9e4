"""The registry of deployment types an agent can host.

A deployment type is a module with two functions:

- `estimate_memory(spec: dict, ctx: AgentContext) -> int` — bytes it will hold,
  checked against the agent's memory budget *before* anything is loaded;
- `load(deployment_id: str, spec: dict, ctx: AgentContext) -> Deployment`.

"onnx-stage" (one pipeline stage, `stage.py`) is the first; the LLM's
tensor-parallel shard adds one module and one line in `TYPES`, not a change
to the control loop: every frame whose meta names a `deployment_id` is handed
to that deployment's `handle()`.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any, Protocol

from edge_runtime.agent.cache import ShardCache
from edge_runtime.agent.protocol import Hop
from edge_runtime.errors import DeployError
from transports.wire import Frame

log = logging.getLogger(__name__)

# deployment kind -> module implementing `estimate_memory` and `load`
TYPES: dict[str, str] = {
    "onnx-stage": "edge_runtime.agent.stage",
    "llm-shard": "edge_runtime.agent.llm_shard",
}


def register(kind: str, module: str) -> None:
    """Add a deployment type at run time (e.g. from a plugin)."""
    TYPES[kind] = module


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

    def send_to_client(self, identity: bytes, frame: Frame) -> None:
        """Queue `frame` for the client (coordinator) connected with `identity`."""
        ...

    def send_to_peer(self, hop: Hop, frame: Frame) -> None:
        """Queue `frame` for another agent's control socket."""
        ...

    def dilate(self, busy_s: float) -> None:
        """Sleep so `busy_s` of compute looks like the emulated device's (no-op when real)."""
        ...

    def allow(self, public_key: str) -> None:
        """Accept connections from this CURVE public key from now on."""
        ...


class Deployment(Protocol):
    """A loaded deployment; `handle` must not block the control loop."""

    @property
    def memory_bytes(self) -> int: ...

    def handle(self, kind: str, sender: bytes, frame: Frame) -> None: ...

    def status(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


def _module(kind: str) -> Any:
    if kind not in TYPES:
        raise DeployError(f"unknown deployment type {kind!r}; this agent serves {sorted(TYPES)}")
    return importlib.import_module(TYPES[kind])


def estimate_memory(kind: str, spec: dict[str, Any], ctx: AgentContext) -> int:
    return int(_module(kind).estimate_memory(spec, ctx))


def load(kind: str, deployment_id: str, spec: dict[str, Any], ctx: AgentContext) -> Deployment:
    deployment: Deployment = _module(kind).load(deployment_id, spec, ctx)
    return deployment
