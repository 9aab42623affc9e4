"""The last request's timeline from real trace spans (`edge_runtime.trace`), when the
agents were tracing it (`edge-runtime serve --trace`): one lane per device and activity.

Why the dashboard asks the agents itself: it runs in the server's HTTP threads, beside
the scheduler that owns the coordinator's sockets, and the coordinator's capture only
becomes a `Trace` when tracing stops. Agents keep spans in a ring that a fetch leaves
as it is (`TraceGet`), and a traced llm-shard names its trace id in its status
(`trace_id`), so the monitor's own sockets fetch them; the clock offsets are estimated
the way the SDK does (`ClockOffsets` from empty `TraceGet` round trips, then `align`),
and only the spans inside the request's time are kept. Fetched again only when the
last request changed, so an idle page costs the agents nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.metrics.monitor import ClusterMonitor
from edge_runtime.metrics.serve_stats import RequestTimeline
from edge_runtime.metrics.snapshot import AgentSnapshot
from edge_runtime.protocol import TraceGet, TraceReply
from edge_runtime.protocol.trace import MAX_TRACE_IDS, TraceSpan
from edge_runtime.trace import ClockOffsets, ClockSample, Span, Trace, align
from transports.errors import ProtocolError

log = logging.getLogger(__name__)

CLOCK_SAMPLES = 3
"""Empty `TraceGet` round trips per agent before the fetch (the shortest one wins)."""

RESOLUTION = 1000
"""Spans of a lane closer than 1/RESOLUTION of the request's time are drawn as one
block (finer than the page's pixels), so a lane sends at most this many blocks."""


def traced_ids(agents: Sequence[AgentSnapshot]) -> tuple[int, ...]:
    """The trace ids the agents' deployments last traced a step with (none: no trace)."""
    ids = {int(row.raw.get("trace_id") or 0) for agent in agents for row in agent.deployments}
    return tuple(sorted(i for i in ids if i > 0))[-MAX_TRACE_IDS:]


def fetch_trace(monitor: ClusterMonitor, trace_ids: Sequence[int],
                order: Sequence[str] = ()) -> Trace:
    """Every agent's spans of `trace_ids`, aligned on this process's clock."""
    offsets = ClockOffsets()
    records: dict[str, tuple[TraceSpan, ...]] = {}
    names: dict[str, str] = {}
    for asked in [*([()] * CLOCK_SAMPLES), tuple(trace_ids)]:
        for address, (sent, answer, received) in monitor.ask_each(TraceGet(asked)).items():
            if isinstance(answer, str):
                continue  # unreachable now: its lanes are missing, the rest still drawn
            try:
                reply = TraceReply.parse(answer, f"trace reply of {address}")
            except ProtocolError as error:
                log.warning("dashboard: %s", error)
                continue
            offsets.observe(address, sent, reply.clock, received)
            names[address] = reply.name
            if asked:
                records[reply.name] = reply.spans
    samples: dict[str, ClockSample] = {}
    for address, name in names.items():
        best = offsets.get(address)
        if best is not None:
            samples[name] = best
    return align(records, samples, order)


def _blocks(spans: Sequence[Span], start: float, end: float) -> list[dict[str, Any]]:
    """`spans` (in time order) clipped to [start, end], in seconds from `start`; spans
    closer than a `RESOLUTION`th of the window merge into one block (`count` of them)."""
    gap = (end - start) / RESOLUTION
    blocks: list[dict[str, Any]] = []
    for span in spans:
        lo, hi = max(0.0, span.start - start), min(end, span.end) - start
        if blocks and lo - blocks[-1]["end_s"] < gap:
            last = blocks[-1]
            last["end_s"] = max(last["end_s"], hi)
            last["count"] += 1
        else:
            blocks.append({"name": span.name, "start_s": lo, "end_s": hi, "count": 1})
    for block in blocks:
        block["start_s"], block["end_s"] = round(block["start_s"], 6), round(block["end_s"], 6)
    return blocks


def request_lanes(trace: Trace, start: float, end: float) -> dict[str, Any]:
    """The spans of `trace` that overlap [start, end] (wall clock), by (device, lane),
    in seconds from `start`, for the page to draw."""
    inside = Trace(tuple(s for s in trace.spans if s.end >= start and s.start <= end),
                   trace.devices, trace.offsets)
    lanes = []
    for device, lane in inside.lanes():
        lanes.append({"device": device, "lane": lane, "busy_s": inside.busy_s(device, lane),
                      "spans": _blocks(inside.on(device, lane), start, end)})
    used = {lane["device"] for lane in lanes}
    return {"devices": [d for d in inside.devices if d in used], "lanes": lanes,
            "spans": len(inside.spans),
            "clock_error_s": {d: s.error_s for d, s in trace.offsets.items() if d in used}}


class RequestTraces:
    """The last request's span lanes, fetched once per request (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[Any, ...] | None = None
        self._lanes: dict[str, Any] | None = None

    def lanes(self, monitor: ClusterMonitor, agents: Sequence[AgentSnapshot],
              last: RequestTimeline) -> dict[str, Any] | None:
        """None when no agent traced (or the spans could not be fetched)."""
        ids = traced_ids(agents)
        if not ids:
            return None
        key = (last.id, last.started_at, ids)
        with self._lock:
            if key != self._key:
                self._key, self._lanes = key, None
                try:
                    trace = fetch_trace(monitor, ids, [a.name for a in agents])
                except EdgeRuntimeError as error:
                    log.warning("dashboard: no trace spans for the last request: %s", error)
                else:
                    end = last.started_at + last.total_s
                    found = request_lanes(trace, last.started_at, end)
                    self._lanes = found if found["lanes"] else None
            return self._lanes


__all__ = ["CLOCK_SAMPLES", "RESOLUTION", "RequestTraces", "fetch_trace",
           "request_lanes", "traced_ids"]
