"""`Cluster.plan` then `deploy(plan=...)`, live exit thresholds, and memory budgets
that the planner and the agents count the same way — on real agent processes.

One module-scoped cluster of two CURVE-secured agents whose memory budgets are set
from the plan itself: "exact" gets precisely what the digits model with its two
exit heads needs on one device (three stages, three onnxruntime sessions), "short"
one byte less.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import edge_runtime as er
from devices import presets
from edge_runtime.errors import ConfigError
from partitioner import (
    InfeasiblePlanError,
    ModelGraph,
    PlanMismatchError,
    device_bytes,
    plan_single,
)
from support.cluster import DIGITS_MODEL, assert_outputs_equal, digits_inputs, reference
from support.onnx_models import mlp_chain

# Bytes a device is charged for the whole digits model with its exits: the sum of
# its three stages' memory (the same on every device: bytes do not depend on speed).
NEED = sum(device_bytes(plan_single(ModelGraph.from_onnx(DIGITS_MODEL),
                                    presets.get("phone")).stages).values())


@pytest.fixture(scope="module")
def cluster() -> Iterator[er.LocalCluster]:
    with er.local_cluster(2, memory_budgets=[NEED, NEED - 1], names=["exact", "short"]) as local:
        yield local


def _deployed(cluster: er.LocalCluster) -> dict[str, dict[str, object]]:
    return {name: row["deployments"] for name, row in cluster.status().items()}


def test_plan_deploys_nothing_and_a_plan_at_the_budget_fits_exactly(
    cluster: er.LocalCluster,
) -> None:
    plan = cluster.plan(DIGITS_MODEL, strategy="single", devices=["exact"])
    assert _deployed(cluster) == {"exact": {}, "short": {}}
    assert [s.device for s in plan.stages] == ["exact"] * 3
    assert device_bytes(plan.stages) == {"exact": NEED}
    # One byte short: the planner refuses, before anything reaches an agent.
    with pytest.raises(InfeasiblePlanError, match="needs about"):
        cluster.plan(DIGITS_MODEL, strategy="single", devices=["short"])

    model = cluster.deploy(DIGITS_MODEL, plan=plan)
    try:
        status = cluster.status()["exact"]
        # The agent admitted all three stages and is now exactly full.
        assert status["memory_used"] == status["memory_budget"] == NEED
        assert len(status["deployments"]) == 3
        feeds = digits_inputs(2)
        assert_outputs_equal(model.run(feeds).outputs, reference(DIGITS_MODEL, feeds), ["final"])
    finally:
        model.unload()
    assert _deployed(cluster)["exact"] == {}


def test_a_plan_for_another_model_is_refused(cluster: er.LocalCluster, tmp_path: Path) -> None:
    plan = cluster.plan(DIGITS_MODEL, strategy="single", devices=["exact"], exits=())
    other = mlp_chain(tmp_path / "mlp.onnx")
    with pytest.raises(PlanMismatchError):
        cluster.deploy(other, plan=plan)
    assert _deployed(cluster)["exact"] == {}


def test_thresholds_in_the_plan_and_changed_while_deployed(cluster: er.LocalCluster) -> None:
    plan = cluster.plan(DIGITS_MODEL, strategy="single", devices=["exact"],
                        exits={"exit1": 0.0, "exit2": None})  # p >= 0: always stops at exit1
    assert {e.name: e.threshold for e in plan.exits} == {"exit1": 0.0, "exit2": None,
                                                        "final": None}
    model = cluster.deploy(DIGITS_MODEL, plan=plan)
    feeds = digits_inputs(3, start=5)
    want = reference(DIGITS_MODEL, feeds)
    try:
        first = model.run(feeds)
        assert first.exit == "exit1" and first.stage == 0
        assert_outputs_equal(first.outputs, want, ["exit1"])

        model.set_exit_thresholds({"exit1": None, "exit2": 0.0})
        second = model.run(feeds)
        assert second.exit == "exit2" and second.stage == 1
        assert_outputs_equal(second.outputs, want, ["exit1", "exit2"])

        model.set_exit_thresholds({"exit2": ("max_prob", 1.01)})  # unreachable: runs to the end
        third = model.run(feeds)
        assert third.exit is None and third.stage == 2
        assert_outputs_equal(third.outputs, want)
        assert {e.name: e.threshold for e in model.plan.exits} == {
            "exit1": None, "exit2": 1.01, "final": None}
        assert [None if s.exit is None else s.exit.threshold for s in model.specs] == [
            None, 1.01, None]

        for bad, message in (({"final": 0.5}, "final exit"), ({"exit9": 0.5}, "not an exit"),
                             ({"exit1": "high"}, "not a number"),
                             ({"exit1": ("loudest", 0.5)}, "policy")):
            with pytest.raises(ConfigError, match=message):
                model.set_exit_thresholds(bad)
        # Nothing changed on the agents, which keep serving.
        again = model.run(feeds)
        assert again.exit is None
        np.testing.assert_allclose(again.outputs["final"], want["final"], rtol=1e-5, atol=1e-5)
    finally:
        model.unload()
    with pytest.raises(ConfigError, match="unloaded"):
        model.set_exit_thresholds({"exit1": 0.5})
