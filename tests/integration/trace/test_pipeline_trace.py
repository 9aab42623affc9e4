"""A traced pipeline request over three real agents: spans from each, nested and aligned."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

import edge_runtime as er
from edge_runtime.sdk.clocks import clock_offsets
from edge_runtime.trace import COORDINATOR, Trace, save, to_chrome

MODEL = Path(__file__).resolve().parents[3] / "examples" / "digits" / "digits_exits.onnx"
IMAGE = {"image": np.zeros((1, 1, 8, 8), np.float32)}


def _slack(trace: Trace) -> float:
    """How far two devices' spans may disagree: the offsets' error bounds, plus 1 ms."""
    return max((s.error_s for s in trace.offsets.values()), default=0.0) * 2 + 1e-3


def test_a_traced_run_has_aligned_nested_spans_from_every_stage(
        cluster: er.LocalCluster, tmp_path: Path) -> None:
    for info in cluster.agents:  # the hello at connect time sampled each agent's clock
        sample = clock_offsets(cluster.hub).get(info.address)
        assert sample is not None and abs(sample.offset_s) <= sample.error_s + 1e-3
    model = cluster.deploy(str(MODEL), strategy="pipeline")
    try:
        assert model.run(IMAGE).trace is None  # off unless asked
        result = model.run(IMAGE, trace=True)
    finally:
        model.unload()
    trace = result.trace
    assert trace is not None
    stages = sorted(model.plan.stages, key=lambda s: s.index)
    devices = {s.device for s in stages}
    assert len(devices) >= 2  # the request really crossed agents
    assert set(trace.devices) == {COORDINATOR, *devices}
    assert set(trace.offsets) == devices  # every agent's clock was sampled
    slack = _slack(trace)
    [request] = trace.on(COORDINATOR, "request")
    assert request.request_id == result.request_id
    for span in trace.spans:  # everything happened inside the request
        assert request.contains(span, slack), span
    computes = sorted((s for s in trace.spans if s.lane == "compute"), key=lambda s: s.start)
    assert [s.name for s in computes] == [f"stage {s.index}" for s in stages[:len(computes)]]
    assert len(computes) == result.stage + 1
    for before, after in itertools.pairwise(computes):
        assert after.start >= before.end - slack  # stage k+1 starts after stage k ends
    flights = [s for s in trace.spans if s.lane == "receive" and s.device != COORDINATOR]
    assert len(flights) == len(computes)
    for flight, compute in zip(sorted(flights, key=lambda s: s.start), computes, strict=True):
        assert flight.device == next(s.device for s in stages if f"stage {s.index}" ==
                                     compute.name)
        assert flight.end <= compute.start + slack  # it arrived before it was computed
    for span in trace.spans:
        assert span.end >= span.start
    measured = sum(s.duration_s for s in computes)
    assert abs(measured - result.compute_s) < 1e-3  # the same numbers as Result.stages
    data = json.loads(save(trace, tmp_path / "run.json").read_text())
    assert data == json.loads(json.dumps(to_chrome(trace)))
    assert sum(1 for e in data["traceEvents"] if e["ph"] == "X") == len(trace.spans)


def test_a_traced_burst_shows_requests_in_flight_together(cluster: er.LocalCluster) -> None:
    model = cluster.deploy(str(MODEL), strategy="pipeline")
    try:
        with model.tracing() as capture:
            results = list(model.run_many([IMAGE] * 6, max_in_flight=3))
    finally:
        model.unload()
    trace = capture.trace
    assert trace is not None
    requests = trace.on(COORDINATOR, "request")
    assert sorted(r.request_id for r in requests) == sorted(r.request_id for r in results)
    slack = _slack(trace)
    for request in requests:  # each request's agent spans nest inside it
        own = [s for s in trace.spans if s.request_id == request.request_id
               and s.device != COORDINATOR]
        assert own and all(request.contains(s, slack) for s in own), [
            (s.device, s.lane, s.name, (s.start - request.start) * 1e3, (s.end - request.end) * 1e3)
            for s in own if not request.contains(s, slack)]
    overlapping = sum(1 for a in requests for b in requests
                      if a.request_id < b.request_id and b.start < a.end)
    assert overlapping > 0  # pipelined: a later request started before an earlier ended
