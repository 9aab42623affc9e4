"""The Python SDK: `local_cluster`, `connect`, `Cluster`, `Deployment`, `Result`."""

from edge_runtime.sdk.agents import AgentInfo
from edge_runtime.sdk.cluster import Cluster, connect
from edge_runtime.sdk.config import Timeouts
from edge_runtime.sdk.deployment import Deployment
from edge_runtime.sdk.fallback.kserve import KServeV2
from edge_runtime.sdk.fallback.local_llm import LocalCheckpoint
from edge_runtime.sdk.fallback.local_model import LocalModel
from edge_runtime.sdk.fallback.openai_http import OpenAICompatible
from edge_runtime.sdk.fallback.policy import FallbackPolicy
from edge_runtime.sdk.fallback.remote_agent import RemoteAgent
from edge_runtime.sdk.journal import Journal, JournalLimits
from edge_runtime.sdk.local import LocalCluster, local_cluster
from edge_runtime.sdk.result import Result
from edge_runtime.sdk.resume import Resumed

__all__ = [
    "AgentInfo",
    "Cluster",
    "Deployment",
    "FallbackPolicy",
    "Journal",
    "JournalLimits",
    "KServeV2",
    "LocalCheckpoint",
    "LocalCluster",
    "LocalModel",
    "OpenAICompatible",
    "RemoteAgent",
    "Result",
    "Resumed",
    "Timeouts",
    "connect",
    "local_cluster",
]
