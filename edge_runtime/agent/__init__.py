"""The agent daemon: control loop, shard cache, execution backends, pipeline stages.

Run it with `edge-runtime agent`; the SDK talks to it over the protocol in
docs/PROTOCOL.md. `register` adds a deployment type (e.g. the LLM's shard).
"""

from edge_runtime.agent.backends import Backend, TensorSpec, open_backend
from edge_runtime.agent.config import AgentConfig, parse_size
from edge_runtime.agent.deployments import AgentContext, Deployment, register
from edge_runtime.agent.protocol import StageSpec, StageTiming

__all__ = [
    "AgentConfig",
    "AgentContext",
    "Backend",
    "Deployment",
    "StageSpec",
    "StageTiming",
    "TensorSpec",
    "open_backend",
    "parse_size",
    "register",
]
