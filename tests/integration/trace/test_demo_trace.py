"""The demo's trace step (`edge-runtime demo --trace FILE`) on a real local cluster."""

from __future__ import annotations

import io
from pathlib import Path

import edge_runtime as er
from edge_runtime.demo import Console, DemoContext, DemoOptions
from edge_runtime.demo.tracing import TRACED_REQUESTS, TraceRequests
from edge_runtime.trace import COORDINATOR, load

MODEL = Path(__file__).resolve().parents[3] / "examples" / "digits" / "digits_exits.onnx"


def test_the_demo_step_writes_a_trace_and_its_picture(cluster: er.LocalCluster,
                                                      tmp_path: Path) -> None:
    out = io.StringIO()
    ctx = DemoContext(console=Console(out), options=DemoOptions())
    ctx.state["deployment"] = model = cluster.deploy(str(MODEL), strategy="pipeline")
    try:
        TraceRequests(tmp_path / "demo" / "trace.json").run(ctx)
    finally:
        model.unload()
    trace = load(tmp_path / "demo" / "trace.json")
    requests = trace.on(COORDINATOR, "request")
    assert len(requests) == TRACED_REQUESTS
    assert len({d for d in trace.devices if d != COORDINATOR}) >= 2
    assert sum(1 for a in requests for b in requests
               if a.request_id < b.request_id and b.start < a.end) > 0  # pipelined
    assert (tmp_path / "demo" / "trace.png").stat().st_size > 10_000
    assert "trace.json" in out.getvalue() and ctx.results["trace"]["spans"] == len(trace.spans)
