"""Shards chained in onnxruntime reproduce the whole model; digests guard them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from devices import presets
from partitioner import (
    DigestMismatchError,
    ModelGraph,
    Plan,
    PlanMismatchError,
    extract_shards,
    plan_cuts,
    plan_pipeline,
    shard_digest,
    verify_shard,
)
from support import onnx_models as om

DEVICES = [presets.get(n) for n in ("pi4", "jetson-orin-nano", "phone", "laptop")]


def _cut_sets(n: int) -> list[list[int]]:
    """A spread of cut sets: one cut at every quarter, and three cuts together."""
    singles = sorted({max(1, min(n - 1, round(n * f))) for f in (0.25, 0.5, 0.75)})
    triples = sorted({max(1, round(n * f)) for f in (0.2, 0.5, 0.8)})
    return [[c] for c in singles] + ([triples] if len(triples) == 3 and triples[-1] < n else [])


def _check_chain(model: Path, plan: Plan, out: Path, batch: int) -> None:
    plan = extract_shards(plan, model, out)
    feeds = om.random_feeds(model, batch=batch, seed=batch)
    reference = om.run_model(model, feeds)
    chained = om.chain_shards(out, plan, feeds)
    assert sorted(chained) == sorted(reference)
    for name, value in reference.items():
        np.testing.assert_allclose(chained[name], value, rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("name,builder", om.ALL_BUILDERS, ids=[n for n, _ in om.ALL_BUILDERS])
def test_chained_shards_reproduce_model_at_many_cuts(tmp_path: Path, name: str, builder) -> None:
    model = builder(tmp_path / f"{name}.onnx")
    graph = ModelGraph.from_onnx(model)
    for i, cuts in enumerate(_cut_sets(len(graph.nodes))):
        plan = plan_cuts(graph, DEVICES, cuts, exits=())
        # batch 3 exercises the symbolic batch dim of every shard
        _check_chain(model, plan, tmp_path / f"cut{i}", batch=1 + 2 * (i % 2))


def test_every_single_cut_of_the_residual_cnn(tmp_path: Path) -> None:
    model = om.residual_cnn(tmp_path / "res.onnx", blocks=2)
    graph = ModelGraph.from_onnx(model)
    feeds = om.random_feeds(model, batch=2)
    reference = om.run_model(model, feeds)
    for cut in range(1, len(graph.nodes)):
        plan = extract_shards(plan_cuts(graph, DEVICES[:2], [cut]), model, tmp_path / f"c{cut}")
        assert plan.stages[0].forward == graph.crossing(cut)
        out = om.chain_shards(tmp_path / f"c{cut}", plan, feeds)
        np.testing.assert_allclose(out["logits"], reference["logits"], rtol=1e-5, atol=1e-5)


def test_digits_plan_with_exit_stages_chains(tmp_path: Path) -> None:
    graph = ModelGraph.from_onnx(om.DIGITS_MODEL)
    plan = plan_pipeline(graph, DEVICES[:3], objective="throughput")
    assert {s.exit for s in plan.stages} >= {"exit1", "exit2", "final"}
    _check_chain(om.DIGITS_MODEL, plan, tmp_path / "digits", batch=4)


def test_shards_have_digests_and_tampering_is_refused(tmp_path: Path) -> None:
    model = om.mlp_chain(tmp_path / "m.onnx")
    graph = ModelGraph.from_onnx(model)
    plan = extract_shards(plan_cuts(graph, DEVICES, [6, 12]), model, tmp_path / "out")
    for stage in plan.stages:
        assert stage.shard_file and stage.shard_sha256
        verify_shard(tmp_path / "out" / stage.shard_file, stage.shard_sha256)
    loaded = Plan.load(tmp_path / "out", model_path=model)
    assert loaded == plan
    shard = tmp_path / "out" / plan.stages[1].shard_file
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DigestMismatchError, match="re-run extract_shards"):
        verify_shard(shard, plan.stages[1].shard_sha256)


def test_plan_for_another_model_is_refused(tmp_path: Path) -> None:
    a = om.mlp_chain(tmp_path / "a.onnx", seed=0)
    b = om.mlp_chain(tmp_path / "b.onnx", seed=1)
    plan = plan_cuts(ModelGraph.from_onnx(a), DEVICES, [5])
    with pytest.raises(PlanMismatchError, match="re-plan"):
        extract_shards(plan, b, tmp_path / "out")
    plan.save(tmp_path / "p")
    with pytest.raises(PlanMismatchError):
        Plan.load(tmp_path / "p", model_path=b)


def test_large_shards_use_external_data_covered_by_the_digest(tmp_path: Path) -> None:
    model = om.mlp_chain(tmp_path / "m.onnx", width=64)
    graph = ModelGraph.from_onnx(model)
    plan = extract_shards(
        plan_cuts(graph, DEVICES, [9]), model, tmp_path / "out", external_data_threshold=1000
    )
    shard = tmp_path / "out" / plan.stages[0].shard_file
    data_file = shard.with_name(shard.name + ".data")
    assert data_file.exists() and data_file.stat().st_size >= 64 * 64 * 4
    assert plan.stages[0].shard_sha256 == shard_digest(shard)
    feeds = om.random_feeds(model)
    np.testing.assert_allclose(
        om.chain_shards(tmp_path / "out", plan, feeds)["y"],
        om.run_model(model, feeds)["y"],
        rtol=1e-5,
        atol=1e-5,
    )
    raw = bytearray(data_file.read_bytes())
    raw[0] ^= 0x01
    data_file.write_bytes(bytes(raw))
    with pytest.raises(DigestMismatchError):
        verify_shard(shard, plan.stages[0].shard_sha256)


def test_model_with_external_data_is_analysed_and_split(tmp_path: Path) -> None:
    import onnx

    source = om.mlp_chain(tmp_path / "src.onnx", width=48)
    model = onnx.load(str(source))
    external = tmp_path / "ext" / "model.onnx"
    external.parent.mkdir()
    onnx.save_model(
        model, str(external), save_as_external_data=True, location="weights.bin", size_threshold=0
    )
    graph = ModelGraph.from_onnx(external)
    assert graph.total_param_bytes == 6 * (48 * 48 + 48) * 4
    plan = extract_shards(plan_cuts(graph, DEVICES, [4, 10]), external, tmp_path / "out")
    feeds = om.random_feeds(source)
    np.testing.assert_allclose(
        om.chain_shards(tmp_path / "out", plan, feeds)["y"],
        om.run_model(source, feeds)["y"],
        rtol=1e-5,
        atol=1e-5,
    )
