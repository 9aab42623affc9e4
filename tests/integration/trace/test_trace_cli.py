"""`--trace FILE` on `run` and `generate`, then `edge-runtime trace show FILE --png`,
each a real subprocess starting its own local agents."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np

from edge_runtime.trace import COORDINATOR, load

ROOT = Path(__file__).parents[3]
MODEL = ROOT / "examples" / "digits" / "digits_exits.onnx"
CHECKPOINT = ROOT / "examples" / "tinylm" / "checkpoint"
CLI = [sys.executable, "-m", "edge_runtime.cli.main"]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_run_writes_a_trace_that_trace_show_draws(tmp_path: Path) -> None:
    image = tmp_path / "image.npy"
    np.save(image, np.zeros((1, 1, 8, 8), np.float32))
    out = tmp_path / "run.json"
    done = _cli("run", str(MODEL), "--local", "2", "--presets", "raspberry-pi-4,phone",
                "--strategy", "pipeline", "--input", f"image={image}", "--repeat", "2",
                "--trace", str(out))
    assert "predicted vs measured" in done.stdout
    assert "ratio" in done.stdout and "stage 0 (" in done.stdout
    trace = load(out)
    assert COORDINATOR in trace.devices and len(trace.devices) >= 2
    assert len(trace.on(COORDINATOR, "request")) == 1  # the last of the two runs
    assert "edge-runtime run" in trace.meta["command"]
    png = tmp_path / "timeline.png"
    shown = _cli("trace", "show", str(out), "--png", str(png))
    assert "compute" in shown.stdout and f"timeline written to {png}" in shown.stdout
    assert png.stat().st_size > 10_000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_generate_writes_a_trace_and_prints_predicted_vs_measured(tmp_path: Path) -> None:
    out = tmp_path / "gen.json"
    done = _cli("generate", str(CHECKPOINT), "--local", "2", "--prompt", "Permission is",
                "--max-new-tokens", "4", "--max-context", "64", "--trace", str(out))
    assert "whole step (ms/token)" in done.stdout
    trace = load(out)
    assert len(trace.on(COORDINATOR, "request")) == 4
    agents = [d for d in trace.devices if d != COORDINATOR]
    assert len(agents) == 2
    for agent in agents:
        assert trace.on(agent, "compute") and trace.on(agent, "allreduce")


def test_serve_writes_the_trace_of_what_it_served_when_it_stops(tmp_path: Path) -> None:
    out = tmp_path / "serve.json"
    proc = subprocess.Popen([*CLI, "serve", str(CHECKPOINT), "--local", "2", "--port", "0",
                             "--max-context", "64", "--trace", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once it listens and the model is deployed
        assert line.startswith("serving checkpoint at http://127.0.0.1:"), line
        url = line.split(" at ")[1].split()[0]
        request = urllib.request.Request(
            f"{url}/completions", method="POST", headers={"Content-Type": "application/json"},
            data=json.dumps({"model": "checkpoint", "prompt": "Permission is",
                             "max_tokens": 3, "temperature": 0}).encode())
        with urllib.request.urlopen(request, timeout=60) as response:
            assert json.loads(response.read())["usage"]["completion_tokens"] == 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    trace = load(out)
    assert len(trace.on(COORDINATOR, "request")) == 3  # the prompt's step, then two more
    assert all(trace.on(agent, "compute") for agent in trace.devices if agent != COORDINATOR)
    assert len(trace.devices) == 3
