"""Trace records on the wire: the spans an agent recorded for traced requests.

Why on the wire and typed: a request asks for tracing with a `trace_id` (0 = off) in
`run`, `activation` and `llm_step`; each agent then records small `TraceSpan`s into a
bounded ring, and the coordinator fetches them with `trace` (`TraceGet`), whose reply
also stamps the agent's clock so the coordinator can line the spans of several devices
up (an NTP-style offset, `edge_runtime.trace.clock`). Nothing is recorded for requests
that do not ask, so tracing costs nothing when off.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edge_runtime.protocol import kinds as k
from edge_runtime.protocol.fields import choice, ident, integer, number, optional, seq, text, wire
from edge_runtime.protocol.record import Record

LANES: tuple[str, ...] = ("queue", "receive", "compute", "allreduce", "window", "disk",
                          "send", "request")
"""Activities a span may belong to (one timeline lane per device and activity):
queue (waiting for the stage or share's worker), receive (a frame in flight, from the
sender's stamp to arrival), compute, allreduce (waiting inside a collective), window
(compute waiting for a weight block), disk (the window's read-ahead reading a block),
send (handing a frame to the socket loop), request (the coordinator's whole request)."""
MAX_TRACE_IDS = 4096
"""Most trace ids one `trace` request asks for (one per step of a long generation)."""
MAX_SPANS = 65536
"""Most spans one reply carries (an agent's ring holds fewer)."""
MAX_TRACE_ID = 2**63 - 1

_time = number(0.0, 1e12)


@dataclass(frozen=True)
class TraceSpan(Record):
    """One timed activity of one agent for one traced request.

    `start` and `end` are the recording agent's wall clock (seconds since the epoch).
    A `receive` span also has `sent_at`, the sender's stamp in the *sender's* clock, and
    `peer`, the sender's name ("" = the coordinator): aligned, the span runs from the
    sender's stamp to the arrival, i.e. the frame's flight.
    """

    trace_id: int = field(metadata=wire(integer(1, MAX_TRACE_ID)))
    request_id: int = field(metadata=wire(integer(0)))
    lane: str = field(metadata=wire(choice(*LANES)))
    name: str = field(metadata=wire(text(64, min_len=1)))
    start: float = field(metadata=wire(_time))
    end: float = field(metadata=wire(_time))
    peer: str = field(default="", metadata=wire(text()))
    sent_at: float | None = field(default=None, metadata=wire(optional(_time)))
    nbytes: int = field(default=0, metadata=wire(integer(0)))


@dataclass(frozen=True)
class TraceGet(Record):
    """Coordinator -> agent: the spans recorded for these trace ids (they stay in the
    ring until overwritten, so a second fetch returns them again)."""

    KIND = k.TRACE
    trace_ids: tuple[int, ...] = field(metadata=wire(
        seq(integer(1, MAX_TRACE_ID), MAX_TRACE_IDS)))


@dataclass(frozen=True)
class TraceReply(Record):
    """The agent's spans for the asked trace ids, its clock when it answered (one more
    offset sample), and how many spans its ring has overwritten since it started."""

    KIND = k.REPLY
    name: str = field(metadata=wire(ident))
    clock: float = field(metadata=wire(_time))
    spans: tuple[TraceSpan, ...] = field(metadata=wire(seq(TraceSpan.parse, MAX_SPANS)))
    dropped: int = field(default=0, metadata=wire(integer(0)))


__all__ = ["LANES", "MAX_SPANS", "MAX_TRACE_IDS", "TraceGet", "TraceReply", "TraceSpan"]
