"""An agent's metrics: its status record and its wire counters, read at scrape time.

Nothing is counted twice: the collector asks the agent for the same status map a
coordinator's `status` request gets (`Agent.status_map`) plus the `WireCounters` the
control loop keeps (requests, errors and handling time by kind, bytes by peer), and
turns them into families (`families.py`) only when Prometheus scrapes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from edge_runtime.metrics.counters import WireCounters
from edge_runtime.metrics.exporter import DEFAULT_METRICS_HOST, Exporter, start_exporter
from edge_runtime.metrics.families import status_families, wire_families

log = logging.getLogger(__name__)


class AgentView(Protocol):
    """What the collector reads of a running agent (`agent.daemon.Agent`)."""

    @property
    def name(self) -> str: ...

    @property
    def wire(self) -> WireCounters: ...

    def status_map(self) -> Mapping[str, Any]: ...


class AgentCollector(Collector):
    """Families of one agent, built from its state at each scrape."""

    def __init__(self, agent: AgentView) -> None:
        self._agent = agent

    def collect(self) -> Iterator[Metric]:
        try:
            status = self._agent.status_map()
        except Exception:  # a scrape must not fail because a deployment's row did
            log.exception("reading the agent's status for metrics failed")
            status = {}
        if status:
            yield from status_families([status])
        yield from wire_families(self._agent.name, self._agent.wire)


def agent_registry(agent: AgentView) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(agent))
    return registry


def start_agent_exporter(agent: AgentView, port: int,
                         host: str = DEFAULT_METRICS_HOST) -> Exporter:
    """Serve `agent`'s metrics at http://host:port/metrics (a daemon thread)."""
    exporter = start_exporter(agent_registry(agent), port, host)
    print(f"agent {agent.name} metrics at {exporter.url}", flush=True)
    return exporter


__all__ = ["AgentCollector", "AgentView", "agent_registry", "start_agent_exporter"]
