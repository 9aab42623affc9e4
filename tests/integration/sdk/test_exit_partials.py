"""Exit outputs reach the coordinator once, from the stage that computed them.

A 3-stage pipeline on three real agent processes (CURVE) whose first two stages end
at exit heads with 1024 classes: when those exits do not fire, each stage sends its
exit's logits to the coordinator itself (a partial result) and the later hops carry
only the activations (and one predicted class per row, for patience exits); the
coordinator merges everything into the one `Result`, equal to plain onnxruntime.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edge_runtime as er
from partitioner.graph import ModelGraph
from partitioner.pipeline import plan_cuts
from support.cluster import assert_outputs_equal, reference

CLASSES = 1024
WIDTH = 16
BATCH = 4


def exits_model(path: Path, seed: int = 0) -> Path:
    """x → block → `exit1` (1024 classes) → block (identity) → `exit2` (exit1's head plus
    noise, so the two exits agree on some inputs only) → block → `logits`."""
    rng = np.random.default_rng(seed)
    head = rng.standard_normal((WIDTH, CLASSES))
    weights = {"w0": rng.standard_normal((WIDTH, WIDTH)), "head0": head,
               "w1": np.eye(WIDTH), "head1": head + 0.3 * rng.standard_normal(head.shape),
               "w2": rng.standard_normal((WIDTH, WIDTH)), "head2": rng.standard_normal((WIDTH, 5))}
    node = helper.make_node
    nodes = [node("MatMul", ["x", "w0"], ["m0"]), node("Relu", ["m0"], ["h0"]),
             node("MatMul", ["h0", "head0"], ["exit1"]),
             node("MatMul", ["h0", "w1"], ["m1"]), node("Relu", ["m1"], ["h1"]),
             node("MatMul", ["h1", "head1"], ["exit2"]),
             node("MatMul", ["h1", "w2"], ["m2"]), node("Relu", ["m2"], ["h2"]),
             node("MatMul", ["h2", "head2"], ["logits"])]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", classes])
               for name, classes in (("exit1", CLASSES), ("exit2", CLASSES), ("logits", 5))]
    graph = helper.make_graph(
        nodes, "exits_1024", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                            ["batch", WIDTH])], outputs,
        [numpy_helper.from_array(w.astype(np.float32), name) for name, w in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def cluster() -> Iterator[er.LocalCluster]:
    with er.local_cluster(3) as local:
        yield local


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return exits_model(tmp_path_factory.mktemp("exits") / "exits.onnx")


def three_stages(cluster: er.LocalCluster, model: Path, exits: dict[str, object]) -> er.Deployment:
    """One stage per agent, cut right after each exit head."""
    graph = ModelGraph.from_onnx(model)
    cuts = [head.position for head in graph.exits if not head.final]
    plan = plan_cuts(graph, [a.profile for a in cluster.agents], cuts, cluster.links())
    deployment = cluster.deploy(model, plan=plan, exits=exits)
    assert [s.exit for s in deployment.plan.stages] == ["exit1", "exit2", "logits"]
    assert len(set(deployment.agents)) == 3
    return deployment


def feeds(batch: int, seed: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((batch, WIDTH)).astype(np.float32)}


def test_exit_outputs_skip_the_later_hops_and_the_result_matches(
        cluster: er.LocalCluster, model: Path) -> None:
    deployment = three_stages(cluster, model, {"exit1": 1.01, "exit2": 1.01})  # never fire
    try:
        inputs = feeds(BATCH, seed=1)
        result = deployment.run(inputs, trace=True)
        assert result.exit is None and result.stage == 2
        assert sorted(result.outputs) == ["exit1", "exit2", "logits"]
        assert_outputs_equal(result.outputs, reference(model, inputs))
        assert result.trace is not None
        hops = {span.device: span.nbytes for span in result.trace.spans
                if span.lane == "receive" and span.name == "activation"}
        exit_bytes = BATCH * CLASSES * 4
        assert len(hops) == 2, hops
        # an activation is BATCH × 16 floats plus a vote per row per exit: far below one
        # exit's logits, which before rode along both hops (and exit2's the last one)
        assert all(0 < nbytes < exit_bytes // 8 for nbytes in hops.values()), hops
        partials = [s for s in result.trace.spans if s.lane == "receive" and s.name == "partial"]
        assert sorted(s.peer for s in partials) == sorted(deployment.agents[:2])
    finally:
        deployment.unload()


def test_an_exit_that_fires_still_answers_from_its_stage(
        cluster: er.LocalCluster, model: Path) -> None:
    deployment = three_stages(cluster, model, {"exit1": 0.0, "exit2": 1.01})
    try:
        inputs = feeds(2, seed=2)
        result = deployment.run(inputs)
        assert (result.exit, result.stage, sorted(result.outputs)) == ("exit1", 0, ["exit1"])
        assert len(result.stages) == 1
        assert_outputs_equal(result.outputs, reference(model, inputs), ["exit1"])
        deployment.set_exit_thresholds({"exit1": 1.01, "exit2": 0.0})
        result = deployment.run(inputs)  # exit1's logits come as a partial, exit2 answers
        assert (result.exit, result.stage) == ("exit2", 1)
        assert sorted(result.outputs) == ["exit1", "exit2"]
        assert_outputs_equal(result.outputs, reference(model, inputs), ["exit1", "exit2"])
    finally:
        deployment.unload()


def test_a_patience_exit_compares_with_the_votes_of_earlier_exits(
        cluster: er.LocalCluster, model: Path) -> None:
    """exit2 with patience 2 fires when exit1 (whose logits no longer travel to exit2's
    stage) predicted the same class, and only then."""
    deployment = three_stages(cluster, model, {"exit1": 1.01, "exit2": ("patience", 2.0)})
    fired = []
    try:
        for seed in range(12):
            inputs = feeds(1, seed=100 + seed)
            want = reference(model, inputs)
            agree = bool(want["exit1"].argmax(axis=1)[0] == want["exit2"].argmax(axis=1)[0])
            result = deployment.run(inputs)
            assert result.exit == ("exit2" if agree else None), seed
            assert_outputs_equal(result.outputs, want, ["exit1", "exit2"])
            fired.append(agree)
    finally:
        deployment.unload()
    assert any(fired) and not all(fired), fired  # both cases were seen


def test_run_many_merges_each_requests_own_partials(
        cluster: er.LocalCluster, model: Path) -> None:
    deployment = three_stages(cluster, model, {"exit1": 1.01, "exit2": 1.01})
    try:
        batches = [feeds(1 + i % 3, seed=200 + i) for i in range(16)]
        results = list(deployment.run_many(iter(batches), max_in_flight=6))
        assert len(results) == len(batches)
        for inputs, result in zip(batches, results, strict=True):
            assert result.exit is None
            assert_outputs_equal(result.outputs, reference(model, inputs))
        assert not cluster.hub._partials  # every partial was claimed by its request
    finally:
        deployment.unload()


def test_a_failover_replays_without_stale_or_duplicate_partials(model: Path) -> None:
    """SIGKILL the middle stage's agent mid-stream: requests in flight are sent again
    under new wire ids; partials of the abandoned attempts (exit1's logits from the first
    stage) are dropped, and every result still equals plain onnxruntime, once, in order."""
    fast = er.Timeouts(request_s=10.0, heartbeat_interval_s=0.2, heartbeat_timeout_s=1.0,
                       hello_s=3.0)
    n = 120
    batches = [feeds(1, seed=300 + i) for i in range(n)]
    with er.local_cluster(3, timeouts=fast) as local:
        deployment = three_stages(local, model, {"exit1": 1.01, "exit2": 1.01})
        victim = deployment.agents[1]
        local.link(victim).alive = None  # found on the wire, as for a remote agent
        got = []
        for i, result in enumerate(deployment.run_many(iter(batches), max_in_flight=8)):
            if i == n // 3:
                next(p for p in local.processes if p.name == victim).kill()
            got.append(result)
        assert deployment.failovers == 1 and victim not in deployment.agents
        assert max(r.attempts for r in got) == 2  # some were in flight and sent again
        assert len(got) == n
        for inputs, result in zip(batches, got, strict=True):
            assert result.exit is None
            assert_outputs_equal(result.outputs, reference(model, inputs))
        assert not local.hub._partials  # nothing kept of the abandoned attempts
