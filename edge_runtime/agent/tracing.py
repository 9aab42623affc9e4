"""Where an agent records the spans of traced requests (`protocol/trace.py`).

Why a module of its own: the stage, the LLM share and the layer window each add a few
lines at their insertion points, and the recording rules (which lane, which clock,
nothing when the request did not ask) live here once. Each agent keeps one bounded
`SpanRing`, found by its name, which the `trace` request reads.

Clocks: spans are stamped with the wall clock (`time.time()`), the one clock whose
offset between devices the coordinator estimates; intervals measured with
`perf_counter` are moved onto it by this process' fixed difference between the two.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from edge_runtime.agent.deployments import AgentContext
from edge_runtime.agent.llm_timing import StepClock
from edge_runtime.trace.recorder import SpanRing

_rings: dict[str, SpanRing] = {}
_lock = threading.Lock()


def ring_for(agent: str) -> SpanRing:
    """The span ring of the agent named `agent` (one per agent; made on first use)."""
    with _lock:
        ring = _rings.get(agent)
        if ring is None:
            ring = _rings[agent] = SpanRing()
        return ring


def wall(perf: float) -> float:
    """A `perf_counter()` reading as wall-clock seconds (this process' fixed offset)."""
    return perf + (time.time() - time.perf_counter())


class TracedStepClock(StepClock):
    """`StepClock` that also records each compute stretch and each collective wait of a
    traced step as spans (for an untraced step it is the plain clock)."""

    def __init__(self, ctx: AgentContext, ring: SpanRing, trace_id: int,
                 request_id: int) -> None:
        super().__init__(ctx)
        self._ring, self._trace, self._request = ring, trace_id, request_id
        self._since = time.time()

    def sync(self) -> None:
        super().sync()
        if self._trace:
            now = time.time()
            self._ring.record(self._trace, self._request, "compute", "compute", self._since, now)
            self._since = now

    def synced(self) -> None:
        super().synced()
        if self._trace:
            now = time.time()
            self._ring.record(self._trace, self._request, "allreduce", "collective wait",
                              self._since, now)
            self._since = now

    def finish(self) -> None:
        """The step's last stretch of compute (after its last collective)."""
        if self._trace:
            self._ring.record(self._trace, self._request, "compute", "compute", self._since)


class ShareTracer:
    """The trace state of one LLM share: the step being traced, for the window's spans.

    The window reads ahead on its own thread, between and during steps; its reads and
    waits are recorded under the last traced step's id while steps keep being traced
    (a traced generation), and not at all once an untraced step comes."""

    def __init__(self, ctx: AgentContext) -> None:
        self._ctx = ctx
        self.ring = ring_for(ctx.name)
        self._trace = 0
        self._request = 0

    def step(self, trace_id: int, request_id: int, arrived: float) -> TracedStepClock:
        """A step begins: record its queue wait (from `arrived`, wall clock) and return
        the clock that records its compute and collective waits."""
        self._trace, self._request = trace_id, request_id
        self.ring.record(trace_id, request_id, "queue", "queue", arrived)
        return TracedStepClock(self._ctx, self.ring, trace_id, request_id)

    def watch(self, window: Any) -> None:
        """Observe `window`'s (a `LayerWindow`'s) block reads and waits, if it has one."""
        if window is not None and hasattr(window, "observer"):
            window.observer = self._window_event

    def _window_event(self, lane: str, block: str, start: float, end: float,
                      nbytes: int) -> None:
        trace = self._trace
        if trace:
            name = f"read {block}" if lane == "disk" else f"wait {block}"
            self.ring.record(trace, self._request, lane, name, wall(start), wall(end),
                             nbytes=nbytes)


__all__ = ["ShareTracer", "TracedStepClock", "ring_for", "wall"]
