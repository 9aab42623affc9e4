"""Tracing: spans of traced requests on every device, aligned, exported and drawn.

Agents record `protocol.TraceSpan`s into a bounded `SpanRing` only for requests that
carry a trace id; the SDK fetches them, lines them up with the NTP-style clock offsets
of `ClockOffsets` (`align` → `Trace`), and `chrome` writes the Chrome trace JSON that
Perfetto opens while `render` draws a timeline PNG. Imports `protocol` and `errors`
only (never the agent or the SDK), so both sides use it.
"""

from edge_runtime.trace.chrome import from_chrome, load, save, to_chrome
from edge_runtime.trace.clock import ClockOffsets, ClockSample
from edge_runtime.trace.model import COORDINATOR, Span, Trace, align
from edge_runtime.trace.recorder import DEFAULT_CAPACITY, SpanRing

__all__ = [
    "COORDINATOR",
    "DEFAULT_CAPACITY",
    "ClockOffsets",
    "ClockSample",
    "Span",
    "SpanRing",
    "Trace",
    "align",
    "from_chrome",
    "load",
    "save",
    "to_chrome",
]
