"""`SpanRing`: an agent's bounded, thread-safe store of the spans of traced requests.

Why a ring: an agent may serve traced requests for days, and its memory must not grow
with them; the newest `capacity` spans are kept and the rest overwritten (and counted,
so a fetch can say spans were lost). Recording is one lock and one deque append, and
only for requests that asked for a trace (`trace_id` != 0): off costs one int test.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable

from edge_runtime.protocol.trace import TraceSpan

DEFAULT_CAPACITY = 16384
"""Spans kept per agent: a 64-token generation over 3 agents with a streaming window
records a few thousand; a few MB at most."""


class SpanRing:
    """The newest `capacity` spans, searchable by trace id."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"a span ring needs room for at least one span, got {capacity}")
        self._spans: deque[TraceSpan] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._spans)

    def add(self, span: TraceSpan) -> None:
        with self._lock:
            if len(self._spans) == self._spans.maxlen:
                self.dropped += 1
            self._spans.append(span)

    def record(self, trace_id: int, request_id: int, lane: str, name: str, start: float,
               end: float | None = None, *, peer: str = "", sent_at: float | None = None,
               nbytes: int = 0) -> None:
        """Add one span (nothing when `trace_id` is 0: the request did not ask);
        `end` defaults to now."""
        if not trace_id:
            return
        stop = time.time() if end is None else end
        self.add(TraceSpan(trace_id, request_id, lane, name, start, max(start, stop), peer,
                           sent_at, nbytes))

    def spans_for(self, trace_ids: Iterable[int]) -> tuple[TraceSpan, ...]:
        wanted = set(trace_ids)
        with self._lock:
            return tuple(s for s in self._spans if s.trace_id in wanted)


__all__ = ["DEFAULT_CAPACITY", "SpanRing"]
