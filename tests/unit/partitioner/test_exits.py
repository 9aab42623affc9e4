"""Exit policies against a plain-Python reference, calibration and SLO planning on digits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from devices import presets
from partitioner import (
    InfeasiblePlanError,
    ModelGraph,
    PartitionError,
    apply_calibration,
    calibrate_exits,
    exit_decision,
    exit_latencies,
    exit_scores,
    first_exits,
    plan_pipeline,
    plan_with_slo,
    simulate_exits,
)
from support import onnx_models as om

DEVICES = [presets.get(n) for n in ("pi4", "jetson-orin-nano", "phone")]


@pytest.fixture(scope="module")
def digits_logits() -> tuple[list[np.ndarray], np.ndarray]:
    data = np.load(om.DIGITS_MODEL.parent / "calibration.npz")
    outputs = om.run_model(om.DIGITS_MODEL, {"image": data["images"]})
    return [outputs["exit1"], outputs["exit2"], outputs["final"]], data["labels"]


def _reference(row: list[float]) -> tuple[float, float, float]:
    """max prob, entropy (nats), top-1 − top-2 margin of one row, the textbook way."""
    exps = [math.exp(v) for v in row]
    total = sum(exps)
    probs = sorted((e / total for e in exps), reverse=True)
    return probs[0], -sum(p * math.log(p) for p in probs), probs[0] - probs[1]


def test_scores_match_a_plain_python_reference() -> None:
    logits = np.random.default_rng(0).normal(size=(50, 7)) * 3
    expected = np.array([_reference(row) for row in logits.tolist()])
    np.testing.assert_allclose(exit_scores("max_prob", logits), expected[:, 0], rtol=1e-9)
    np.testing.assert_allclose(exit_scores("entropy", logits), expected[:, 1], rtol=1e-9)
    np.testing.assert_allclose(exit_scores("margin", logits), expected[:, 2], rtol=1e-9)
    huge = np.array([[1000.0, 0.0, -1000.0]])  # stable softmax
    assert exit_scores("max_prob", huge)[0] == pytest.approx(1.0)


def test_decisions_follow_thresholds() -> None:
    logits = np.array([[5.0, 0.0, 0.0], [0.1, 0.0, 0.0]])
    assert exit_decision("max_prob", logits, 0.9).tolist() == [True, False]
    assert exit_decision("margin", logits, 0.5).tolist() == [True, False]
    assert exit_decision("entropy", logits, 0.5).tolist() == [True, False]
    assert exit_decision("max_prob", logits, None).tolist() == [False, False]


def test_patience_needs_k_agreeing_exits() -> None:
    a = np.array([[1.0, 0.0], [1.0, 0.0]])
    b = np.array([[2.0, 0.0], [0.0, 2.0]])
    assert exit_decision("patience", b, 2, previous=[a]).tolist() == [True, False]
    assert exit_decision("patience", b, 3, previous=[a]).tolist() == [False, False]
    assert exit_decision("patience", b, 3, previous=[a, a]).tolist() == [True, False]
    assert first_exits("patience", [a, b, b], [2, 2]).tolist() == [1, 2]


def test_bad_logits_and_policies_are_refused() -> None:
    with pytest.raises(PartitionError, match="batch, classes"):
        exit_decision("max_prob", np.zeros((2, 3, 4)), 0.5)
    with pytest.raises(PartitionError, match="unknown exit policy"):
        calibrate_exits([np.zeros((2, 3))], np.zeros(2), [0.0], policy="vibes")
    with pytest.raises(PartitionError, match="latencies"):
        calibrate_exits([np.zeros((2, 3))] * 2, np.zeros(2), [0.0])


@pytest.mark.parametrize("policy", ["max_prob", "entropy", "margin", "patience"])
def test_calibration_keeps_accuracy_and_cuts_latency(digits_logits, policy: str) -> None:
    logits, labels = digits_logits
    plan = plan_pipeline(ModelGraph.from_onnx(om.DIGITS_MODEL), DEVICES)
    latencies = exit_latencies(plan)
    assert latencies == sorted(latencies) and len(latencies) == 3
    result = calibrate_exits(logits, labels, latencies, policy=policy, tolerance=0.01)
    assert result.chosen.accuracy >= result.final_accuracy - 0.01
    assert result.chosen.expected_latency_s < latencies[-1]
    # the chosen point is reproducible from its thresholds
    again = simulate_exits(policy, logits, labels, result.chosen.thresholds, latencies)
    assert again == result.chosen
    # the curve is a Pareto front: latency and accuracy both increase along it
    lat = [p.expected_latency_s for p in result.curve]
    acc = [p.accuracy for p in result.curve]
    assert lat == sorted(lat) and acc == sorted(acc) and len(set(acc)) == len(acc)
    calibrated = apply_calibration(plan, result)
    assert calibrated.expected_latency_s == result.chosen.expected_latency_s
    assert calibrated.exits[-1].threshold is None
    assert calibrated.extra["calibration"]["curve"]
    assert [e.policy for e in calibrated.exits] == [policy] * 3


def test_strict_tolerance_exits_less(digits_logits) -> None:
    logits, labels = digits_logits
    latencies = [1.0, 2.0, 3.0]
    loose = calibrate_exits(logits, labels, latencies, tolerance=0.05)
    strict = calibrate_exits(logits, labels, latencies, tolerance=0.0)
    assert loose.chosen.expected_latency_s <= strict.chosen.expected_latency_s
    assert strict.chosen.accuracy >= strict.final_accuracy


def test_slo_planning_trades_accuracy_for_latency(digits_logits) -> None:
    logits, labels = digits_logits
    graph = ModelGraph.from_onnx(om.DIGITS_MODEL)
    full = plan_pipeline(graph, DEVICES)
    exit1_time = exit_latencies(full)[0]
    generous = plan_with_slo(graph, DEVICES, None, logits, labels, slo_s=10.0)
    tight = plan_with_slo(graph, DEVICES, None, logits, labels, slo_s=exit1_time * 1.05)
    assert tight.expected_latency_s <= exit1_time * 1.05
    assert generous.expected_latency_s <= 10.0
    tight_acc = tight.extra["calibration"]["accuracy"]
    assert generous.extra["calibration"]["accuracy"] >= tight_acc
    with pytest.raises(InfeasiblePlanError, match="SLO"):
        plan_with_slo(graph, DEVICES, None, logits, labels, slo_s=exit1_time * 0.5)


def test_truncated_slo_plan_extracts_and_answers_at_its_last_exit(digits_logits, tmp_path) -> None:
    from partitioner import extract_shards

    logits, labels = digits_logits
    graph = ModelGraph.from_onnx(om.DIGITS_MODEL)
    exit1_time = exit_latencies(plan_pipeline(graph, DEVICES))[0]
    plan = plan_with_slo(graph, DEVICES, None, logits, labels, slo_s=exit1_time * 1.05)
    assert plan.stages[-1].node_end < len(graph.nodes)  # the model was cut short at an exit
    assert plan.exits[-1].final and plan.stages[-1].exit == plan.exits[-1].name
    plan = extract_shards(plan, om.DIGITS_MODEL, tmp_path)
    feeds = {"image": np.load(om.DIGITS_MODEL.parent / "test_split.npz")["images"][:8]}
    chained = om.chain_shards(tmp_path, plan, feeds)
    reference = om.run_model(om.DIGITS_MODEL, feeds)
    assert sorted(chained) == sorted(e.output for e in plan.exits)
    for name, value in chained.items():
        np.testing.assert_allclose(value, reference[name], rtol=1e-4, atol=1e-5)
