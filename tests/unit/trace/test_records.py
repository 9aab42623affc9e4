"""The trace records on the wire, the span ring, clock offsets and alignment."""

from __future__ import annotations

import time

import pytest

from edge_runtime.protocol import LlmStep, Run, TraceGet, TraceReply, TraceSpan
from edge_runtime.trace import COORDINATOR, ClockOffsets, ClockSample, SpanRing, align
from edge_runtime.trace.compare import Comparison, format_rows
from transports.errors import ProtocolError


def test_trace_records_round_trip_and_are_checked() -> None:
    span = TraceSpan(7, 3, "receive", "activation", 10.0, 10.5, "pi", 9.9, 128)
    reply = TraceReply("jetson", 11.0, (span,), 2)
    assert TraceReply.from_meta(reply.to_meta()) == reply
    assert TraceGet.from_meta(TraceGet((7, 8)).to_meta()).trace_ids == (7, 8)
    bad = {**span.to_meta(), "lane": "gossip"}
    with pytest.raises(ProtocolError, match="lane"):
        TraceSpan.parse(bad, "span")
    with pytest.raises(ProtocolError, match="trace_id"):
        TraceSpan.parse({**span.to_meta(), "trace_id": 0}, "span")


def test_trace_flag_defaults_off_and_travels() -> None:
    meta = Run("m.0", 1.0).to_meta()
    assert meta["trace_id"] == 0
    del meta["trace_id"]  # a sender that says nothing about tracing
    assert Run.from_meta(meta).trace_id == 0
    step = LlmStep("llm", trace_id=42)
    assert LlmStep.from_meta(step.to_meta()).trace_id == 42


def test_ring_records_only_traced_requests_and_stays_bounded() -> None:
    ring = SpanRing(capacity=4)
    ring.record(0, 1, "compute", "stage 0", 1.0, 2.0)  # not traced: nothing kept
    assert len(ring) == 0
    for i in range(6):
        ring.record(5 if i % 2 else 6, i, "compute", "stage 0", float(i), i + 0.5)
    assert len(ring) == 4 and ring.dropped == 2
    assert [s.request_id for s in ring.spans_for([5])] == [3, 5]
    ring.record(9, 0, "queue", "q", 5.0, 4.0)  # an end before the start is clamped
    assert ring.spans_for([9])[0].end == 5.0
    with pytest.raises(ValueError):
        SpanRing(0)


def test_clock_offset_is_ntp_style_and_keeps_the_shortest_round_trip() -> None:
    sample = ClockSample.of(sent=100.0, agent_clock=105.2, received=100.4)
    assert sample.offset_s == pytest.approx(5.0)
    assert sample.error_s == pytest.approx(0.2)
    offsets = ClockOffsets()
    offsets.observe("pi", 0.0, 3.0, 2.0)  # rtt 2 s: offset 2
    offsets.observe("pi", 10.0, 12.55, 10.1)  # rtt 0.1 s: offset 2.5, kept
    offsets.observe("pi", 20.0, 40.0, 21.0)  # rtt 1 s: worse, ignored
    offsets.observe("pi", 30.0, None, 30.0)  # a reply without a clock adds nothing
    assert offsets.offset("pi") == pytest.approx(2.5)
    assert offsets.offset("unknown") == 0.0


def test_align_moves_each_device_onto_the_coordinators_clock() -> None:
    offsets = {"pi": ClockSample(2.0, 0.001), "jetson": ClockSample(-1.0, 0.001)}
    records = {
        COORDINATOR: [TraceSpan(1, 1, "request", "run", 100.0, 100.1)],
        # the pi's clock runs 2 s ahead: its compute at 102.01..102.05 is 100.01..100.05
        "pi": [TraceSpan(1, 1, "receive", "run", 102.01, 102.01, "", 100.005),
               TraceSpan(1, 1, "compute", "stage 0", 102.01, 102.05)],
        # the jetson's runs 1 s behind; its frame came from the pi (stamped in the pi's clock)
        "jetson": [TraceSpan(1, 1, "receive", "activation", 99.06, 99.06, "pi", 102.052),
                   TraceSpan(1, 1, "compute", "stage 1", 99.06, 99.09)],
    }
    trace = align(records, offsets, [COORDINATOR, "pi", "jetson"])
    assert trace.devices == (COORDINATOR, "pi", "jetson")
    pi_compute = trace.on("pi", "compute")[0]
    assert pi_compute.start == pytest.approx(100.01)
    flight = trace.on("jetson", "receive")[0]
    assert flight.start == pytest.approx(100.052) and flight.end == pytest.approx(100.06)
    assert flight.peer == "pi"
    assert trace.on("pi", "receive")[0].start == pytest.approx(100.005)  # coordinator's clock
    request = trace.on(COORDINATOR, "request")[0]
    assert all(request.contains(s) for s in trace.spans)
    assert trace.busy_s("jetson", "compute") == pytest.approx(0.03)


def test_predicted_vs_measured_rows() -> None:
    rows = [Comparison("stage 0 (pi)", 0.002, 0.003), Comparison("stage 1", 0.0, 0.001)]
    assert rows[0].ratio == pytest.approx(1.5) and rows[1].ratio == 0.0
    lines = format_rows(rows)
    assert "1.50" in lines[1] and lines[2].rstrip().endswith("-")


def test_recording_is_cheap_when_off() -> None:
    ring = SpanRing()
    started = time.perf_counter()
    for i in range(100_000):
        ring.record(0, i, "compute", "x", 0.0, 1.0)
    assert len(ring) == 0
    assert time.perf_counter() - started < 1.0  # an int test per call, nothing else
