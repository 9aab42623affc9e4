"""Prometheus metric families from what agents already report.

One translation, used twice: an agent's own exporter (`agent_exporter.py`) and the
server's `/metrics` (`serve_collector.py`, over every agent's status reply) read the
same `status` record (`protocol.StatusReply` as a map), so a series means the same
thing wherever it is scraped. Deployment rows are the free-form maps each deployment
type reports (`agent/llm_shard.py`, `agent/stage.py`); a field a row lacks is skipped.

Every name starts with `edge_runtime_`; see docs/observability.md for the list.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from edge_runtime.metrics.counters import HistogramSnapshot, WireCounters

PREFIX = "edge_runtime_"

# (metric, help, key in the agent's status map)
_AGENT_GAUGES = (
    ("agent_uptime_seconds", "seconds since the agent started", "uptime_s"),
    ("agent_memory_used_bytes", "memory held or reserved by the agent's deployments",
     "memory_used"),
    ("agent_memory_budget_bytes", "memory the agent may give its deployments "
     "(absent: unlimited)", "memory_budget"),
)
_AGENT_COUNTERS = (
    ("agent_requests", "requests the agent answered", "requests_served"),
    ("agent_errors", "error frames the agent answered", "errors_answered"),
)
# per deployment: (metric, help, path into the deployment's status row, counter?)
_DEPLOYMENT_SERIES: tuple[tuple[str, str, tuple[str, ...], bool], ...] = (
    ("deployment_memory_bytes", "memory the agent counts for the deployment",
     ("memory_bytes",), False),
    ("rss_bytes", "the agent process's resident set size", ("rss_bytes",), False),
    ("llm_steps", "forward steps an LLM share ran", ("steps",), True),
    ("llm_tokens", "token positions an LLM share computed", ("tokens",), True),
    ("llm_compute_seconds", "seconds an LLM share computed", ("compute_s",), True),
    ("allreduce_seconds", "seconds an LLM share spent in allreduces and gathers "
     "(communication and waiting for the group)", ("comm_s",), True),
    ("window_loads", "weight blocks the layer window read from disk",
     ("window", "loads"), True),
    ("window_uses", "weight blocks the layer window handed to compute",
     ("window", "uses"), True),
    ("window_read_bytes", "bytes the layer window read from disk",
     ("window", "bytes_read"), True),
    ("window_wait_seconds", "seconds compute waited for the layer window",
     ("window", "wait_seconds"), True),
    ("window_budget_bytes", "bytes the layer window may hold", ("window", "budget_bytes"),
     False),
    ("stage_queue_depth", "requests waiting for a pipeline stage", ("queued",), False),
    ("stage_served", "requests a pipeline stage ran", ("served",), True),
    ("stage_busy_seconds", "seconds a pipeline stage computed", ("busy_s",), True),
)
_DEPLOYMENT_LABELS = ["agent", "deployment", "type"]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _at(row: Mapping[str, Any], path: tuple[str, ...]) -> float | None:
    value: Any = row
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return _number(value)


def resident_weight_bytes(row: Mapping[str, Any]) -> float | None:
    """Weight bytes an LLM share holds in memory: its whole share when resident, else the
    most its layer window has held at once."""
    share = row.get("share")
    window = row.get("window")
    if not isinstance(share, Mapping):
        return None
    if isinstance(window, Mapping) and window and not window.get("resident", True):
        return _number(window.get("peak_loaded_bytes"))
    return _number(share.get("weight_bytes"))


def window_hits(row: Mapping[str, Any]) -> float | None:
    """Block uses served from memory without a disk read (uses minus loads)."""
    uses, loads = _at(row, ("window", "uses")), _at(row, ("window", "loads"))
    if uses is None or loads is None:
        return None
    return max(uses - loads, 0.0)


def status_families(statuses: Iterable[Mapping[str, Any]]) -> Iterator[Metric]:
    """Families over agents' status maps (`StatusReply.to_meta()`), labelled by agent."""
    rows = [s for s in statuses if s.get("name")]
    kinds: tuple[tuple[type[GaugeMetricFamily | CounterMetricFamily], Any], ...] = (
        (GaugeMetricFamily, _AGENT_GAUGES), (CounterMetricFamily, _AGENT_COUNTERS))
    for kind, specs in kinds:
        for metric, help_text, key in specs:
            family = kind(PREFIX + metric, help_text, labels=["agent"])
            for status in rows:
                value = _number(status.get(key))
                if value is not None:
                    family.add_metric([str(status["name"])], value)
            yield family
    deployments = [(str(status["name"]), str(deployment_id), row)
                   for status in rows
                   for deployment_id, row in (status.get("deployments") or {}).items()
                   if isinstance(row, Mapping)]
    yield from deployment_families(deployments)


def deployment_families(deployments: list[tuple[str, str, Mapping[str, Any]]]
                        ) -> Iterator[Metric]:
    """Families over (agent, deployment id, status row) triples."""
    for metric, help_text, path, is_counter in _DEPLOYMENT_SERIES:
        kind = CounterMetricFamily if is_counter else GaugeMetricFamily
        family = kind(PREFIX + metric, help_text, labels=_DEPLOYMENT_LABELS)
        for agent, deployment_id, row in deployments:
            value = _at(row, path)
            if value is not None:
                family.add_metric([agent, deployment_id, str(row.get("type", ""))], value)
        yield family
    derived = (
        ("resident_weight_bytes", "weight bytes an LLM share holds in memory",
         resident_weight_bytes, GaugeMetricFamily),
        ("window_hits", "weight block uses served from memory without a disk read",
         window_hits, CounterMetricFamily),
    )
    for metric, help_text, fn, kind in derived:
        family = kind(PREFIX + metric, help_text, labels=_DEPLOYMENT_LABELS)
        for agent, deployment_id, row in deployments:
            value = fn(row)
            if value is not None:
                family.add_metric([agent, deployment_id, str(row.get("type", ""))], value)
        yield family


def histogram_family(name: str, help_text: str, label_names: list[str],
                     series: Mapping[tuple[str, ...], HistogramSnapshot]) -> Metric:
    family = HistogramMetricFamily(PREFIX + name, help_text, labels=label_names)
    for labels, snap in series.items():
        buckets = [(_bound(b), float(c)) for b, c in zip(snap.bounds, snap.cumulative,
                                                          strict=False)]
        buckets.append(("+Inf", float(snap.cumulative[-1])))
        family.add_metric(list(labels), buckets, snap.total)
    return family


def _bound(value: float) -> str:
    return repr(float(value))


def wire_families(agent: str, wire: WireCounters) -> Iterator[Metric]:
    """Families over one agent's `WireCounters`: requests, errors and handling time by
    message kind, bytes by peer."""
    requests = CounterMetricFamily(PREFIX + "agent_messages", "messages the agent handled, "
                                   "by kind", labels=["agent", "kind"])
    for kind, count in sorted(wire.requests().items()):
        requests.add_metric([agent, kind], count)
    yield requests
    errors = CounterMetricFamily(PREFIX + "agent_message_errors", "error frames the agent "
                                 "answered, by message kind and error type",
                                 labels=["agent", "kind", "type"])
    for (kind, error_type), count in sorted(wire.errors().items()):
        errors.add_metric([agent, kind, error_type], count)
    yield errors
    yield histogram_family(
        "agent_handle_seconds", "seconds the agent took to answer a control request, by kind",
        ["agent", "kind"], {(agent, kind): snap for kind, snap in wire.latency().items()})
    for direction, table in (("sent", wire.bytes_sent()), ("received", wire.bytes_received())):
        family = CounterMetricFamily(PREFIX + f"agent_bytes_{direction}",
                                     f"bytes the agent's control socket {direction}, by peer",
                                     labels=["agent", "peer"])
        for peer, count in sorted(table.items()):
            family.add_metric([agent, peer], count)
        yield family


__all__ = ["PREFIX", "deployment_families", "histogram_family", "resident_weight_bytes",
           "status_families", "window_hits", "wire_families"]
