"""edge-runtime: run one model across a handful of edge devices.

    import edge_runtime as er
    with er.local_cluster(3, presets=["raspberry-pi-4", "jetson-orin-nano", "phone"]) as c:
        model = c.deploy("model.onnx", strategy="auto")
        result = model.run({"input": x})

The SDK is imported lazily (first attribute access), so `import edge_runtime`
and the CLI's `--help` stay fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from edge_runtime import errors

__version__ = "0.1.0"

if TYPE_CHECKING:
    from edge_runtime.protocol import StageTiming
    from edge_runtime.sdk import (
        Cluster,
        Deployment,
        FallbackPolicy,
        Journal,
        JournalLimits,
        KServeV2,
        LocalCheckpoint,
        LocalCluster,
        LocalModel,
        OpenAICompatible,
        RemoteAgent,
        Result,
        Resumed,
        Timeouts,
        connect,
        local_cluster,
    )
    from edge_runtime.sdk.llm import LlmDeployment

_LAZY = {
    "Cluster": "edge_runtime.sdk",
    "Deployment": "edge_runtime.sdk",
    "FallbackPolicy": "edge_runtime.sdk",
    "Journal": "edge_runtime.sdk",
    "JournalLimits": "edge_runtime.sdk",
    "KServeV2": "edge_runtime.sdk",
    "LocalCheckpoint": "edge_runtime.sdk",
    "LocalModel": "edge_runtime.sdk",
    "OpenAICompatible": "edge_runtime.sdk",
    "RemoteAgent": "edge_runtime.sdk",
    "Resumed": "edge_runtime.sdk",
    "LocalCluster": "edge_runtime.sdk",
    "Result": "edge_runtime.sdk",
    "Timeouts": "edge_runtime.sdk",
    "connect": "edge_runtime.sdk",
    "local_cluster": "edge_runtime.sdk",
    "StageTiming": "edge_runtime.protocol",
    "LlmDeployment": "edge_runtime.sdk.llm",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edge_runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "Cluster",
    "Deployment",
    "FallbackPolicy",
    "Journal",
    "JournalLimits",
    "KServeV2",
    "LlmDeployment",
    "LocalCheckpoint",
    "LocalCluster",
    "LocalModel",
    "OpenAICompatible",
    "RemoteAgent",
    "Result",
    "Resumed",
    "StageTiming",
    "Timeouts",
    "__version__",
    "connect",
    "errors",
    "local_cluster",
]
