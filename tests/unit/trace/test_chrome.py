"""Chrome trace JSON: well-formed for Perfetto / chrome://tracing, and read back whole."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from edge_runtime.errors import ConfigError
from edge_runtime.trace import ClockSample, Span, Trace, from_chrome, load, save, to_chrome
from edge_runtime.trace.render import COLORS, render_png


def _trace() -> Trace:
    base = 1_700_000_000.0
    spans = [
        Span("coordinator", "request", "run", base, base + 0.050, 1),
        Span("coordinator", "request", "run", base + 0.010, base + 0.060, 2),
        Span("pi", "queue", "stage 0", base + 0.001, base + 0.002, 1),
        Span("pi", "queue", "stage 0", base + 0.0015, base + 0.020, 2),  # overlaps: 2nd track
        Span("pi", "compute", "stage 0", base + 0.002, base + 0.020, 1),
        Span("pi", "compute", "stage 0", base + 0.020, base + 0.035, 2),
        Span("jetson", "receive", "activation", base + 0.020, base + 0.022, 1, "pi", 4096),
        Span("jetson", "compute", "stage 1", base + 0.022, base + 0.045, 1),
        Span("jetson", "disk", "read layer0.attn", base + 0.010, base + 0.030, 1, nbytes=9),
    ]
    return Trace(tuple(spans), ("coordinator", "pi", "jetson"),
                 {"pi": ClockSample(0.001, 0.0004)}, {"title": "t", "command": "c"}, 3)


def _well_formed(data: dict[str, object]) -> None:
    """What the Trace Event Format asks of complete events, and that each thread nests."""
    events = data["traceEvents"]
    assert isinstance(events, list)
    named_threads = {(e["pid"], e["tid"]) for e in events
                     if e["ph"] == "M" and e["name"] == "thread_name"}
    named_processes = {e["pid"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    by_thread: dict[tuple[int, int], list[tuple[float, float]]] = {}
    for e in events:
        assert e["ph"] in ("X", "M")
        if e["ph"] != "X":
            continue
        assert isinstance(e["name"], str) and e["name"]
        assert isinstance(e["ts"], float | int) and e["ts"] >= 0
        assert isinstance(e["dur"], float | int) and e["dur"] >= 0
        assert (e["pid"], e["tid"]) in named_threads and e["pid"] in named_processes
        by_thread.setdefault((e["pid"], e["tid"]), []).append((e["ts"], e["ts"] + e["dur"]))
    for intervals in by_thread.values():  # no two events of one thread partly overlap
        intervals.sort()
        for (_, end), (start, _) in itertools.pairwise(intervals):
            assert start >= end - 1e-3


def test_export_is_well_formed_chrome_json_and_reads_back(tmp_path: Path) -> None:
    trace = _trace()
    data = json.loads(json.dumps(to_chrome(trace)))  # plain JSON all the way down
    _well_formed(data)
    assert data["displayTimeUnit"] == "ms"
    threads = [e["args"]["name"] for e in data["traceEvents"]
               if e["ph"] == "M" and e["name"] == "thread_name"]
    assert "queue 2" in threads  # overlapping queue waits sit on a second track
    path = save(trace, tmp_path / "sub" / "t.json")
    back = load(path)
    assert back.devices == trace.devices and back.dropped == 3
    assert back.meta["command"] == "c"
    assert back.offsets["pi"] == trace.offsets["pi"]
    assert len(back.spans) == len(trace.spans)
    for a, b in zip(sorted(trace.spans, key=lambda s: (s.start, s.device, s.lane)),
                    sorted(back.spans, key=lambda s: (s.start, s.device, s.lane)), strict=True):
        assert (a.device, a.lane, a.name, a.request_id, a.peer, a.nbytes) == (
            b.device, b.lane, b.name, b.request_id, b.peer, b.nbytes)
        assert a.start == pytest.approx(b.start, abs=2e-6)
        assert a.end == pytest.approx(b.end, abs=2e-6)


def test_reading_what_is_not_a_trace_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="traceEvents"):
        from_chrome({"events": []})
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="--trace"):
        load(tmp_path / "missing.json")


def test_png_has_a_lane_per_device_and_activity(tmp_path: Path) -> None:
    import matplotlib.image as mpimg
    import numpy as np

    path = render_png(_trace(), tmp_path / "t.png")
    assert path.stat().st_size > 10_000
    pixels = (mpimg.imread(path)[..., :3] * 255).round().astype(int)
    colours = {tuple(p) for p in pixels.reshape(-1, 3)[::7]}
    for lane in ("compute", "queue", "disk", "receive", "request"):
        rgb = tuple(int(COLORS[lane][i:i + 2], 16) for i in (1, 3, 5))
        assert any(np.abs(np.array(c) - rgb).sum() < 12 for c in colours), lane
    with pytest.raises(ConfigError, match="no spans"):
        render_png(Trace((), ()), tmp_path / "empty.png")


def test_without_matplotlib_the_error_names_the_extra(tmp_path: Path) -> None:
    """A Python where matplotlib cannot be imported (None in sys.modules blocks it)."""
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from edge_runtime.trace.render import pyplot\n"
            "try:\n    pyplot()\nexcept Exception as e:\n    print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.startswith("ConfigError") and "pip install edge-runtime[plots]" in out
