"""The agent daemon: control loop, shard cache, deployments (pipeline stages, LLM shares).

Run it with `edge-runtime agent`; the SDK talks to it over the protocol in
docs/PROTOCOL.md (`edge_runtime.protocol`). `register` adds a deployment type.
"""

from edge_runtime.agent.config import AgentConfig
from edge_runtime.agent.deployments import AgentContext, Deployment, register

__all__ = [
    "AgentConfig",
    "AgentContext",
    "Deployment",
    "register",
]
