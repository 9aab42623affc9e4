"""Real ONNX models nobody here wrote (PP-OCR det/rec/cls from the rapidocr-onnxruntime
wheel): analysis, planning and shard chaining at several cut points."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from devices import presets
from partitioner import ModelGraph, extract_shards, plan_cuts, plan_pipeline
from support import onnx_models as om

# Locate the wheel's models without importing it (its import pulls in OpenCV).
_SPEC = importlib.util.find_spec("rapidocr_onnxruntime")
if _SPEC is None or _SPEC.origin is None:  # pragma: no cover - installed by the test extra
    pytest.skip(
        "rapidocr-onnxruntime is not installed (pip install -e .[test])", allow_module_level=True
    )
MODELS = Path(_SPEC.origin).parent / "models"
# (file, input height, input width): sizes the models accept (det needs multiples of 32)
CASES = [
    ("ch_ppocr_mobile_v2.0_cls_infer.onnx", 48, 96),
    ("ch_PP-OCRv4_det_infer.onnx", 64, 64),
    ("ch_PP-OCRv4_rec_infer.onnx", 48, 64),
]
DEVICES = [presets.get(n) for n in ("pi4", "jetson-orin-nano", "phone", "laptop")]


@pytest.mark.parametrize("name,height,width", CASES, ids=[c[0].split("_")[1] for c in CASES])
def test_real_model_shards_reproduce_outputs(
    tmp_path: Path, name: str, height: int, width: int
) -> None:
    model = MODELS / name
    graph = ModelGraph.from_onnx(model, dims={"x:2": height, "x:3": width})
    assert graph.total_flops > 1e6 and graph.total_param_bytes > 1e5
    # cuts inside residual / SE blocks carry several tensors: pick the widest one too
    points = graph.cut_points()
    widest = max(points, key=lambda c: (len(c.tensors), c.position)).position
    spread = [points[len(points) // 4].position, points[(3 * len(points)) // 4].position]
    cuts = sorted({*spread, widest})
    assert max(len(graph.crossing(c)) for c in cuts) >= 2
    plan = extract_shards(plan_cuts(graph, DEVICES, cuts), model, tmp_path / "shards", graph=graph)
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((1, 3, height, width)).astype(np.float32)}
    reference = om.run_model(model, feeds)
    chained = om.chain_shards(tmp_path / "shards", plan, feeds)
    for key, value in reference.items():
        np.testing.assert_allclose(chained[key], value, rtol=1e-4, atol=1e-5)


def test_planner_splits_a_real_model_under_memory_pressure() -> None:
    model = MODELS / "ch_PP-OCRv4_rec_infer.onnx"
    graph = ModelGraph.from_onnx(model, dims={"x:2": 48, "x:3": 64})
    budget = int(graph.total_param_bytes * 0.6)
    plan = plan_pipeline(graph, DEVICES[:3], memory_budgets=[budget] * 3)
    assert len({s.device_index for s in plan.stages}) >= 2
    assert all(s.memory_bytes <= budget for s in plan.stages)
