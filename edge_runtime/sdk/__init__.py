"""The Python SDK: `local_cluster`, `connect`, `Cluster`, `Deployment`, `Result`."""

from edge_runtime.sdk.agents import AgentInfo
from edge_runtime.sdk.cluster import Cluster, connect
from edge_runtime.sdk.config import Timeouts
from edge_runtime.sdk.deployment import Deployment
from edge_runtime.sdk.local import LocalCluster, local_cluster
from edge_runtime.sdk.result import Result

__all__ = [
    "AgentInfo",
    "Cluster",
    "Deployment",
    "LocalCluster",
    "Result",
    "Timeouts",
    "connect",
    "local_cluster",
]
