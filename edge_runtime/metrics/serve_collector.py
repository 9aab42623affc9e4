"""The server's metrics: HTTP, generations, the scheduler's queue, and every agent.

Read at scrape time from what already exists: `HttpCounters` (the middleware),
`ServeStats` (tokens as they leave), the scheduler's queue and running slots, and the
agents' status through a `ClusterMonitor` (cached for about a second, shared with the
dashboard) — the same families an agent's own exporter gives (`families.py`), plus
whether each agent answered and its round trip from the server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edge_runtime.metrics.families import PREFIX, histogram_family, status_families
from edge_runtime.metrics.http import HttpCounters
from edge_runtime.metrics.monitor import ClusterMonitor
from edge_runtime.metrics.serve_stats import ServeStats

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeSources:
    """Where the server's numbers come from (callables: read at scrape time)."""

    stats: ServeStats
    http: HttpCounters
    queued: Callable[[], int]  # requests waiting for the scheduler
    running: Callable[[], int]  # KV cache slots in use (generations running)
    slots: int  # KV cache slots per agent (the deployment's max_batch)
    monitor: ClusterMonitor | None = None


def _gauge(name: str, help_text: str, value: float) -> Metric:
    family = GaugeMetricFamily(PREFIX + name, help_text)
    family.add_metric([], value)
    return family


class ServeCollector(Collector):
    def __init__(self, sources: ServeSources) -> None:
        self._s = sources

    def collect(self) -> Iterator[Metric]:
        yield from self._http()
        yield from self._generations()
        yield _gauge("queue_depth", "generations waiting for the scheduler", self._s.queued())
        yield _gauge("kv_slots_in_use", "KV cache slots holding a running generation",
                     self._s.running())
        yield _gauge("kv_slots", "KV cache slots per agent (max_batch)", self._s.slots)
        if self._s.monitor is not None:
            yield from monitor_families(self._s.monitor)

    def _http(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(PREFIX + "http_requests", "HTTP requests answered",
                                       labels=["route", "method", "status"])
        for (route, method, status), count in sorted(self._s.http.requests().items()):
            requests.add_metric([route, method, status], count)
        yield requests
        yield histogram_family("http_request_seconds", "seconds from an HTTP request's "
                               "arrival to the last byte of its answer", ["route"],
                               {(route,): h for route, h in self._s.http.latency().items()})
        errors = CounterMetricFamily(PREFIX + "api_errors", "API requests answered with an "
                                     "error, by error type and HTTP status",
                                     labels=["type", "status"])
        for (error_type, code), count in sorted(self._s.stats.errors.copy().items()):
            errors.add_metric([error_type, str(code)], count)
        yield errors

    def _generations(self) -> Iterator[Metric]:
        stats = self._s.stats
        tokens = CounterMetricFamily(PREFIX + "generated_tokens", "tokens sent to clients")
        tokens.add_metric([], stats.tokens_total)
        yield tokens
        finished = CounterMetricFamily(PREFIX + "generations", "generations that ended, "
                                       "by finish reason", labels=["finish"])
        for finish, count in sorted(stats.finished.copy().items()):
            finished.add_metric([finish], count)
        yield finished
        ttft, duration = stats.histograms()
        yield histogram_family("time_to_first_token_seconds", "seconds from submission to "
                               "a generation's first token (queue and prefill)", [],
                               {(): ttft})
        yield histogram_family("generation_seconds", "seconds from submission to a "
                               "generation's end", [], {(): duration})
        tokens_per_s, requests_per_s = stats.rates()
        yield _gauge("tokens_per_second", "tokens sent per second, recent average",
                     tokens_per_s)
        yield _gauge("requests_per_second", "generations started per second, recent "
                     "average", requests_per_s)


def monitor_families(monitor: ClusterMonitor) -> Iterator[Metric]:
    """Every agent's families, from the monitor's (cached) snapshot, plus whether it
    answered and its round trip."""
    try:
        snapshot = monitor.snapshot()
    except Exception:  # a scrape still answers with the server's own numbers
        log.exception("asking the agents for their status failed")
        return
    up = GaugeMetricFamily(PREFIX + "agent_up", "1 if the agent answered its status "
                           "request", labels=["agent"])
    rtt = GaugeMetricFamily(PREFIX + "agent_rtt_seconds", "round trip of a ping from "
                            "the server to the agent", labels=["agent"])
    for agent in snapshot.agents:
        up.add_metric([agent.name], 1.0 if agent.available else 0.0)
        if agent.rtt_s is not None:
            rtt.add_metric([agent.name], agent.rtt_s)
    yield up
    yield rtt
    yield from status_families(a.status_map for a in snapshot.agents if a.available)


class MonitorCollector(Collector):
    """The agents' families alone (the standalone dashboard's `/metrics`)."""

    def __init__(self, monitor: ClusterMonitor) -> None:
        self._monitor = monitor

    def collect(self) -> Iterator[Metric]:
        yield from monitor_families(self._monitor)


def serve_registry(sources: ServeSources) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServeCollector(sources))
    return registry


__all__ = ["MonitorCollector", "ServeCollector", "ServeSources", "monitor_families",
           "serve_registry"]
