"""Prometheus metrics and live cluster status.

Counters are kept where things happen (`counters.py`: the agent's loop, the HTTP
server) or already exist (agent status records, layer-window stats, the scheduler's
queue); collectors turn them into Prometheus families at scrape time, in a registry
of the process's own. `ClusterMonitor` (`monitor.py`) asks agents for their status
from a thread of its own, for `edge-runtime status`, the server's `/metrics` and the
dashboard.

The monitor and the server's collector import the SDK; they load on first use, so an
agent process that only counts does not import the coordinator's modules.
"""

from __future__ import annotations

import importlib
from typing import Any

from edge_runtime.metrics.agent_exporter import (
    AgentCollector,
    AgentView,
    agent_registry,
    start_agent_exporter,
)
from edge_runtime.metrics.counters import Histogram, HistogramSnapshot, WireCounters
from edge_runtime.metrics.exporter import (
    CONTENT_TYPE,
    DEFAULT_METRICS_HOST,
    Exporter,
    render,
    start_exporter,
)
from edge_runtime.metrics.families import status_families, wire_families

_LAZY = {
    "AgentSnapshot": "edge_runtime.metrics.snapshot",
    "ClusterSnapshot": "edge_runtime.metrics.snapshot",
    "ClusterMonitor": "edge_runtime.metrics.monitor",
    "MonitorTarget": "edge_runtime.metrics.monitor",
    "ServeStats": "edge_runtime.metrics.serve_stats",
    "RequestTimeline": "edge_runtime.metrics.serve_stats",
    "ServeCollector": "edge_runtime.metrics.serve_collector",
    "ServeSources": "edge_runtime.metrics.serve_collector",
    "HttpCounters": "edge_runtime.metrics.http",
    "serve_registry": "edge_runtime.metrics.serve_collector",
    "HttpMetrics": "edge_runtime.metrics.http",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edge_runtime.metrics' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = ["CONTENT_TYPE", "DEFAULT_METRICS_HOST", "AgentCollector", "AgentView",
           "Exporter", "Histogram", "HistogramSnapshot", "WireCounters", "agent_registry",
           "render", "start_agent_exporter", "start_exporter", "status_families",
           "wire_families", *_LAZY]
