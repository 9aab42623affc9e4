"""The dashboard's JSON (`/dashboard/state`): agents, the plan as lanes, rates, the last
request's timeline, and whether a chat box has a model to talk to.

Built from the `ClusterMonitor`'s snapshot (what the agents say about themselves) and,
under `edge-runtime serve`, the server's own numbers (`ServeSources`); the last
request's timeline adds the agents' trace spans when they traced it (`timeline.py`). The plan is
drawn from what each agent holds — its deployments' ranges of stages, KV heads, MLP
columns, vocabulary rows or layers — so the picture is what runs, not what was meant to.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge_runtime.dashboard.timeline import RequestTraces
from edge_runtime.metrics.monitor import ClusterMonitor
from edge_runtime.metrics.serve_collector import ServeSources
from edge_runtime.metrics.snapshot import AgentSnapshot

# how each range is named on the page, in the order lanes are drawn
DIMENSIONS = {"stage": "pipeline stage", "layers": "layers", "kv_heads": "KV heads",
              "mlp_columns": "MLP columns", "vocab_rows": "vocabulary rows"}


@dataclass(frozen=True)
class DashboardContext:
    """What one dashboard shows; `model` set = an LLM is served and the chat box works."""

    monitor: ClusterMonitor
    title: str = "edge-runtime"
    model: str | None = None
    serve: ServeSources | None = None
    plan_text: str | None = None  # the deployment's own description, e.g. llm.describe()
    links: bool = True  # measure agent-to-agent links (once per `LINKS_MAX_AGE_S`)
    traces: RequestTraces = field(default_factory=RequestTraces, compare=False, repr=False)


def plan_lanes(agents: Sequence[AgentSnapshot]) -> list[dict[str, Any]]:
    """Per deployment: one lane per agent with the ranges it holds, and each dimension's
    total (the largest end any agent holds), so lanes can be drawn to scale."""
    by_id: dict[str, dict[str, Any]] = {}
    for agent in agents:
        for row in agent.deployments:
            entry = by_id.setdefault(row.id, {"id": row.id, "type": row.type, "lanes": [],
                                              "totals": {}})
            entry["lanes"].append({"agent": agent.name, "detail": row.detail,
                                   "ready": row.ready, "memory_bytes": row.memory_bytes,
                                   "ranges": {k: list(v) for k, v in row.ranges.items()}})
            totals: dict[str, int] = entry["totals"]
            for key, (_, hi) in row.ranges.items():
                totals[key] = max(totals.get(key, 0), hi)
    for entry in by_id.values():
        entry["dimensions"] = [{"key": k, "name": DIMENSIONS.get(k, k)}
                               for k in DIMENSIONS if k in entry["totals"]]
    return [by_id[k] for k in sorted(by_id)]


def _serve_state(ctx: DashboardContext, sources: ServeSources,
                 agents: Sequence[AgentSnapshot]) -> Mapping[str, Any]:
    tokens_per_s, requests_per_s = sources.stats.rates()
    last = sources.stats.last()
    last_request = None
    if last is not None:
        # "trace": per device and activity, the spans the agents recorded for it (None:
        # they were not tracing); the token times stay the server's own view
        last_request = {**last.to_dict(), "trace": ctx.traces.lanes(ctx.monitor, agents, last)}
    return {
        "rates": {"tokens_per_s": tokens_per_s, "requests_per_s": requests_per_s,
                  "tokens_total": sources.stats.tokens_total, "queued": sources.queued(),
                  "running": sources.running(), "slots": sources.slots},
        "last_request": last_request,
    }


def dashboard_state(ctx: DashboardContext) -> dict[str, Any]:
    snapshot = ctx.monitor.snapshot()
    state: dict[str, Any] = {
        "title": ctx.title, "now": time.time(), "model": ctx.model,
        "chat": ctx.model is not None, "plan_text": ctx.plan_text,
        "agents": [a.to_dict() for a in snapshot.agents],
        "taken_at": snapshot.taken_at,
        "plan": plan_lanes(snapshot.agents),
        "rates": None, "last_request": None,
        "links": [row.to_dict() for row in ctx.monitor.links()] if ctx.links else [],
    }
    if ctx.serve is not None:
        state.update(_serve_state(ctx, ctx.serve, snapshot.agents))
    return state


__all__ = ["DIMENSIONS", "DashboardContext", "dashboard_state", "plan_lanes"]
