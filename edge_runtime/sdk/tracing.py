"""Tracing requests from the coordinator: a trace id on the wire, spans back, one `Trace`.

Why here: a traced request carries a trace id (`run`, `llm_step`); each agent on its
path records spans under it. When the traced work ends, `TraceCapture.finish` asks
every agent of the cluster for those spans (`trace`), takes one more clock-offset
sample from each reply, adds the coordinator's own spans (the requests, the results'
flight back) and aligns all of it on the coordinator's clock (`trace.align`).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Protocol

from edge_runtime.errors import AgentError, AgentUnavailableError, EdgeRuntimeError
from edge_runtime.protocol import TraceGet, TraceReply, TraceSpan
from edge_runtime.sdk.agents import Agents
from edge_runtime.sdk.clocks import clock_offsets
from edge_runtime.trace.clock import ClockSample
from edge_runtime.trace.model import COORDINATOR, Trace, align
from edge_runtime.trace.recorder import DEFAULT_CAPACITY

log = logging.getLogger(__name__)

FETCH_TIMEOUT_S = 5.0
"""How long one agent may take to hand over its spans (a ring read: milliseconds)."""
CLOCK_SAMPLES = 3
"""Empty `trace` round trips per agent before the fetch: more clock-offset samples, of
which the shortest round trip wins (the hello's may have met a busy agent)."""


class TraceCapture:
    """The spans of the requests sent while it is active; `trace` once it finished."""

    def __init__(self, trace_id: int) -> None:
        if trace_id < 1:
            raise ValueError(f"a trace id is positive, got {trace_id}")
        self.trace_id = trace_id
        self.trace: Trace | None = None
        # the newest spans only, as an agent's ring keeps: `serve --trace` may run for days
        self._spans: deque[TraceSpan] = deque(maxlen=DEFAULT_CAPACITY)

    def record(self, lane: str, name: str, start: float, end: float | None = None, *,
               request_id: int = 0, peer: str = "", sent_at: float | None = None) -> None:
        """One of the coordinator's own spans (wall clock; `end` defaults to now)."""
        stop = time.time() if end is None else end
        self._spans.append(TraceSpan(self.trace_id, request_id, lane, name, start,
                                     max(start, stop), peer, sent_at))

    def received(self, agent: str, sent_at: float, request_id: int, what: str) -> None:
        """An answer arrived from `agent`, stamped `sent_at` in its clock: its flight."""
        now = time.time()
        self.record("receive", what, now, now, request_id=request_id, peer=agent,
                    sent_at=sent_at)

    def finish(self, cluster: Agents, agents: Iterable[str], **meta: str) -> Trace:
        """Fetch every agent's spans, align them with the coordinator's; sets `trace`."""
        offsets = clock_offsets(cluster.hub)  # by agent address (names may change)
        records: dict[str, tuple[TraceSpan, ...]] = {COORDINATOR: tuple(self._spans)}
        samples: dict[str, ClockSample] = {}
        dropped = 0
        order = list(dict.fromkeys(agents))
        for name in order:
            address = cluster.link(name).address
            try:
                for asked in [*([()] * CLOCK_SAMPLES), (self.trace_id,)]:
                    sent = time.time()
                    reply = cluster.call(name, TraceGet(asked), TraceReply,
                                         timeout_s=FETCH_TIMEOUT_S)
                    offsets.observe(address, sent, reply.clock, time.time())
            except (AgentUnavailableError, AgentError) as error:
                log.warning("no trace spans from %s: %s", name, error)
                continue
            records[name] = reply.spans
            dropped += reply.dropped
            best = offsets.get(address)
            if best is not None:
                samples[name] = best
        trace = align(records, samples, [COORDINATOR, *order])
        used = {s.device for s in trace.spans}
        trace = Trace(trace.spans, tuple(d for d in trace.devices if d in used),
                      {d: s for d, s in trace.offsets.items() if d in used},
                      {"trace_id": str(self.trace_id), **meta}, dropped)
        self.trace = trace
        return trace


class Traceable(Protocol):
    """What sends traced requests: a pipeline `Deployment`, an LLM deployment's runner."""

    tracer: TraceCapture | None


@contextmanager
def traced(cluster: Agents, sender: Traceable, agents: Iterable[str],
           **meta: str) -> Iterator[TraceCapture]:
    """Trace what `sender` sends inside the block; the capture's `trace` is set (spans
    of `agents` and the coordinator, aligned) when the block ends, even on an error."""
    capture = TraceCapture(cluster.hub.next_id())
    sender.tracer = capture
    try:
        yield capture
    finally:
        sender.tracer = None
        try:
            capture.finish(cluster, agents, **meta)
        except EdgeRuntimeError as error:  # never hide the block's own error behind it
            log.warning("the trace could not be collected: %s", error)


__all__ = ["FETCH_TIMEOUT_S", "TraceCapture", "Traceable", "traced"]
