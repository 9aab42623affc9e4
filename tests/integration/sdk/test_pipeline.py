"""Pipelines over real agent processes reproduce a single onnxruntime session.

One module-scoped cluster of three CURVE-secured agents serves every test here
(starting agents costs about a second each); each test deploys its own model.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import edge_runtime as er
from edge_runtime.errors import ConfigError, InputError
from support.cluster import DIGITS_MODEL, assert_outputs_equal, digits_inputs, reference
from support.onnx_models import multi_io, random_feeds, residual_cnn, wide_skips


@pytest.fixture(scope="module")
def cluster() -> Iterator[er.LocalCluster]:
    with er.local_cluster(3) as local:
        yield local


def test_digits_pipeline_matches_single_session(cluster: er.LocalCluster) -> None:
    model = cluster.deploy(DIGITS_MODEL, strategy="pipeline")
    assert len(model.agents) >= 2, model.describe()
    for batch in (1, 3):
        feeds = digits_inputs(batch, start=batch)
        result = model.run(feeds)
        assert result.exit is None
        assert result.stage == len(model.plan.stages) - 1
        assert_outputs_equal(result.outputs, reference(DIGITS_MODEL, feeds))
        assert [t.stage for t in result.stages] == list(range(len(model.plan.stages)))
        assert {t.agent for t in result.stages} == set(model.agents)
        assert result.predicted_latency_s == pytest.approx(model.plan.predicted_latency_s)
    model.unload()


@pytest.mark.parametrize("builder", [residual_cnn, multi_io, wide_skips])
def test_skip_connection_models_match(cluster: er.LocalCluster, tmp_path: Path,
                                      builder: object) -> None:
    path = builder(tmp_path / "model.onnx")  # type: ignore[operator]
    model = cluster.deploy(path, strategy="pipeline")
    assert len(model.agents) >= 2, model.describe()
    feeds = random_feeds(path, batch=2)
    assert_outputs_equal(model.run(feeds).outputs, reference(path, feeds))
    model.unload()


def test_early_exit_answers_from_its_stage(cluster: er.LocalCluster) -> None:
    feeds = digits_inputs(2, start=10)
    want = reference(DIGITS_MODEL, feeds)
    always = cluster.deploy(DIGITS_MODEL, strategy="pipeline", exits={"exit1": 0.0})
    exit1_stage = next(s.index for s in always.plan.stages if s.exit == "exit1")
    result = always.run(feeds)
    assert result.exit == "exit1"
    assert result.stage == exit1_stage
    assert sorted(result.outputs) == ["exit1"]  # nothing after the exit ran
    assert len(result.stages) == exit1_stage + 1
    assert_outputs_equal(result.outputs, want, ["exit1"])
    always.unload()

    second = cluster.deploy(DIGITS_MODEL, strategy="pipeline",
                            exits={"exit1": 1.01, "exit2": 0.0})
    result = second.run(feeds)
    assert result.exit == "exit2"
    assert result.stage == next(s.index for s in second.plan.stages if s.exit == "exit2")
    assert_outputs_equal(result.outputs, want, ["exit1", "exit2"])
    second.unload()

    never = cluster.deploy(DIGITS_MODEL, strategy="pipeline",
                           exits={"exit1": 1.01, "exit2": 1.01})
    result = never.run(feeds)
    assert result.exit is None
    assert_outputs_equal(result.outputs, want)
    never.unload()


def test_run_many_streams_in_order(cluster: er.LocalCluster) -> None:
    model = cluster.deploy(DIGITS_MODEL, strategy="pipeline")
    images = digits_inputs(24)["image"]
    batches = [{"image": image[None]} for image in images]
    results = list(model.run_many(iter(batches), max_in_flight=6))
    assert len(results) == len(batches)
    want = reference(DIGITS_MODEL, {"image": images})["final"]
    for i, result in enumerate(results):
        assert_outputs_equal(result.outputs, {"final": want[i:i + 1]}, ["final"], atol=1e-4)
    ids = [r.request_id for r in results]
    assert ids == sorted(ids)
    model.unload()


def test_single_and_auto_strategies(cluster: er.LocalCluster) -> None:
    feeds = digits_inputs(1, start=5)
    want = reference(DIGITS_MODEL, feeds)
    single = cluster.deploy(DIGITS_MODEL, strategy="single")
    assert len(single.agents) == 1
    assert_outputs_equal(single.run(feeds).outputs, want)
    single.unload()
    auto = cluster.deploy(DIGITS_MODEL, strategy="auto")
    assert_outputs_equal(auto.run(feeds).outputs, want)
    auto.unload()
    with pytest.raises(ConfigError, match="strategy"):
        cluster.deploy(DIGITS_MODEL, strategy="tensor-magic")


def test_bad_inputs_are_refused_with_the_signature(cluster: er.LocalCluster) -> None:
    model = cluster.deploy(DIGITS_MODEL, strategy="single")
    good = digits_inputs(1)["image"]
    cases = [
        {"img": good},  # wrong name
        {"image": good.reshape(1, 64)},  # wrong rank
        {"image": good[:, :, :4, :]},  # wrong fixed dimension
        {"image": good.astype(np.float64)},  # wrong dtype
        {"image": good, "extra": good},  # unexpected input
    ]
    for bad in cases:
        with pytest.raises(InputError, match=r"Expected image: float32\[batch, 1, 8, 8\]"):
            model.run(bad)
    # the first agent checks too: a request that skips the SDK's check is refused there
    from edge_runtime.protocol import Run

    hub = cluster.hub
    link = cluster.link(model.plan.stages[0].device)
    request_id = hub.next_id()
    run = Run(model.specs[0].deployment_id, sent_at=0.0)
    hub.send(link, run.frame(request_id, tensors={"image": good.astype(np.float16)}),
             timeout_s=5)
    reply = hub.wait({request_id}, 10, [link])
    assert reply.is_error and reply.meta["error_type"] == "InputError"
    assert "float32[batch, 1, 8, 8]" in reply.meta["message"]
    # and both keep serving
    assert_outputs_equal(model.run({"image": good}).outputs,
                         reference(DIGITS_MODEL, {"image": good}))
    model.unload()


def test_status_lists_deployments_and_memory(cluster: er.LocalCluster) -> None:
    model = cluster.deploy(DIGITS_MODEL, strategy="pipeline")
    status = cluster.status()
    assert set(status) == {a.name for a in cluster.agents}
    for name in model.agents:
        assert status[name]["available"]
        assert status[name]["memory_used"] > 0
        assert any(k.startswith(model.id) for k in status[name]["deployments"])
    model.unload()
    assert all(not s["deployments"] for s in cluster.status().values())


def test_slo_deploy_plans_exit_thresholds(cluster: er.LocalCluster) -> None:
    from partitioner.errors import InfeasiblePlanError

    with np.load(DIGITS_MODEL.parent / "calibration.npz") as data:
        calibration = ({"image": data["images"].astype(np.float32)}, data["labels"])
    with np.load(DIGITS_MODEL.parent / "test_split.npz") as data:
        images, labels = data["images"][:40].astype(np.float32), data["labels"][:40]
    model = cluster.deploy(DIGITS_MODEL, slo_ms=1000.0, calibration=calibration)
    assert any(e.threshold is not None for e in model.plan.exits if not e.final)
    results = list(model.run_many({"image": img[None]} for img in images))
    everything = reference(DIGITS_MODEL, {"image": images})
    correct = 0
    for i, (label, result) in enumerate(zip(labels, results, strict=True)):
        answered = result.exit or "final"
        want = everything[answered][i:i + 1]
        assert_outputs_equal(result.outputs, {answered: want}, [answered], atol=1e-4)
        correct += int(result.outputs[answered].argmax() == label)
    assert correct / len(labels) >= 0.9
    model.unload()
    with pytest.raises(InfeasiblePlanError, match="SLO"):
        cluster.deploy(DIGITS_MODEL, slo_ms=1e-6, calibration=calibration)
    with pytest.raises(ConfigError, match="calibration"):
        cluster.deploy(DIGITS_MODEL, slo_ms=10.0)


def test_tflite_model_runs_whole_in_litert(cluster: er.LocalCluster, tmp_path: Path) -> None:
    from support.tflite_models import fully_connected_model

    rng = np.random.default_rng(7)
    weights = rng.standard_normal((5, 12)).astype(np.float32)
    bias = rng.standard_normal(5).astype(np.float32)
    path = fully_connected_model(tmp_path / "fc.tflite", weights, bias, relu=True,
                                 dynamic_batch=True)
    model = cluster.deploy(path)
    assert len(model.plan.stages) == 1 and model.specs[0].shard_ext == ".tflite"
    x = rng.standard_normal((3, 12)).astype(np.float32)
    result = model.run({"x": x})
    np.testing.assert_allclose(result.outputs["y"], np.maximum(x @ weights.T + bias, 0),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="Expected x: float32"):
        model.run({"x": x.astype(np.int32)})
    model.unload()


def test_two_deployments_of_one_model_both_answer(cluster: er.LocalCluster) -> None:
    """Two live pipelines over the same agents: each agent's hops to the next stage use
    one socket per deployment, and both deployments keep answering, interleaved (a
    second hop socket sharing the first one's identity was dropped by the ROUTER)."""
    feeds = digits_inputs(2, start=20)
    want = reference(DIGITS_MODEL, feeds)
    first = cluster.deploy(DIGITS_MODEL, strategy="pipeline")
    second = cluster.deploy(DIGITS_MODEL, strategy="pipeline")
    try:
        assert len(first.plan.stages) > 1 and len(second.plan.stages) > 1
        for model in (first, second, first, second):
            assert_outputs_equal(model.run(feeds, timeout_s=20).outputs, want)
    finally:
        first.unload()
        second.unload()
