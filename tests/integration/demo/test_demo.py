"""`edge-runtime demo` end to end: the real command, real agents, real onnxruntime.

The accuracy the demo prints is checked against an independent computation: the
whole model in plain onnxruntime on the same test split, with the exit rule (stop
at the first exit whose softmax top probability reaches its threshold) applied in
numpy with the thresholds the demo reports in its JSON.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

ROOT = Path(__file__).parents[3]
DIGITS = ROOT / "examples" / "digits"
CLI = [sys.executable, "-m", "edge_runtime.cli.main"]


def _independent(
    thresholds: dict[str, float], exit_order: list[str]
) -> tuple[int, int, dict[str, int]]:
    """(correct with exits, correct at the final exit, exit counts) in plain onnxruntime."""
    session = ort.InferenceSession(
        str(DIGITS / "digits_exits.onnx"), providers=["CPUExecutionProvider"]
    )
    with np.load(DIGITS / "test_split.npz", allow_pickle=False) as data:
        images, labels = data["images"], data["labels"]
    names = [o.name for o in session.get_outputs()]
    logits = dict(zip(names, session.run(None, {"image": images}), strict=True))
    answered = np.full(len(labels), len(exit_order) - 1)
    for position in reversed(range(len(exit_order) - 1)):
        z = logits[exit_order[position]].astype(np.float64)
        p = np.exp(z - z.max(axis=1, keepdims=True))
        top = (p / p.sum(axis=1, keepdims=True)).max(axis=1)
        answered = np.where(top >= thresholds[exit_order[position]], position, answered)
    stacked = np.stack([logits[name].argmax(axis=1) for name in exit_order])
    predictions = stacked[answered, np.arange(len(labels))]
    counts = {name: int((answered == i).sum()) for i, name in enumerate(exit_order)}
    final = int((logits[exit_order[-1]].argmax(axis=1) == labels).sum())
    return int((predictions == labels).sum()), final, counts


@pytest.mark.slow  # the whole demo: 3 agent processes, 360 images twice, ~30 s here
def test_demo_end_to_end(tmp_path: Path) -> None:
    report = tmp_path / "demo.json"
    started = time.perf_counter()
    out = subprocess.run(
        [*CLI, "demo", "--json", str(report)],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "Traceback" not in text + out.stderr
    headings = [
        "1. Start a local cluster",
        "2. Devices",
        "3. Plan, calibrate early exits",
        "4. Classify the test split",
        "5. Latency",
        "6. Throughput",
        "7. Generate text with a tiny LLM",
        "8. Summary",
    ]
    for heading in headings:
        assert heading in text
    for device in ("raspberry-pi-4", "jetson-orin-nano", "phone"):
        assert re.search(rf"│ {device}\s+│\s+\d+ │", text), (
            f"{device} missing from the device table"
        )
    assert "demo finished in" in text

    data = json.loads(report.read_text())
    plan = data["plan"]
    assert plan["policy"] == "max_prob"
    assert len({stage["device"] for stage in plan["stages"]}) >= 2  # really split
    exit_order = [name for name in plan["exit_outputs"] if name != "final"] + ["final"]
    assert exit_order == ["exit1", "exit2", "final"]

    correct, final_correct, counts = _independent(plan["thresholds"], exit_order)
    n = data["classify"]["images"]
    assert n == 360
    printed = re.search(r"accuracy with early exits: ([\d.]+)% \((\d+)/(\d+)\)", text)
    assert printed is not None, text
    assert int(printed.group(2)) == correct and int(printed.group(3)) == n
    assert printed.group(1) == f"{100 * correct / n:.1f}"
    baseline = re.search(r"always to the last exit:\s+([\d.]+)% \((\d+)/360\)", text)
    assert baseline is not None and int(baseline.group(2)) == final_correct
    # Which exit answered: the same split as the independent rule, up to one image
    # per exit whose top probability sits on the threshold (float sums differ).
    for name, count in counts.items():
        assert abs(data["classify"]["exits"][name] - count) <= 1, (name, data["classify"])
    assert elapsed < 90, f"the demo took {elapsed:.0f} s; it must stay well under 60 s"


def test_missing_model_is_a_clear_error_before_any_agent_starts(tmp_path: Path) -> None:
    out = subprocess.run(
        [*CLI, "demo", "--assets", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1
    assert "cannot find the demo model digits_exits.onnx" in out.stderr
    assert "Traceback" not in out.stderr


def test_failed_step_is_reported_without_traceback() -> None:
    out = subprocess.run(
        [*CLI, "demo", "--presets", "raspberry-pi-4,toaster"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 1
    assert "Start a local cluster failed: unknown device preset 'toaster'" in out.stdout
    assert "Traceback" not in out.stdout + out.stderr
