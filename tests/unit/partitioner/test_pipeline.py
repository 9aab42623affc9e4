"""plan_pipeline on device presets: structure, predictions, memory, exits, bad input."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from devices import LinkProfile, presets
from partitioner import (
    CostModel,
    InfeasiblePlanError,
    ModelGraph,
    PartitionError,
    Plan,
    plan_cuts,
    plan_pipeline,
    plan_single,
)
from partitioner.cost import Links
from support import onnx_models as om

PI4, ORIN, PHONE = (presets.get(n) for n in ("pi4", "jetson-orin-nano", "phone"))


@pytest.fixture(scope="module")
def digits() -> ModelGraph:
    return ModelGraph.from_onnx(om.DIGITS_MODEL)


def _fast_links(devices: list) -> list[LinkProfile]:
    return [
        LinkProfile(a.name, b.name, rtt_s=1e-5, bandwidth_bytes_per_s=1e10)
        for a in devices
        for b in devices
        if a is not b
    ]


def test_stages_cover_the_model_contiguously_with_consistent_sets(digits: ModelGraph) -> None:
    plan = plan_pipeline(
        digits, [PI4, ORIN, PHONE], _fast_links([PI4, ORIN, PHONE]), objective="throughput"
    )
    assert plan.stages[0].node_start == 0 and plan.stages[-1].node_end == len(digits.nodes)
    for before, after in zip(plan.stages, plan.stages[1:], strict=False):
        assert before.node_end == after.node_start
        assert set(after.inputs) <= set(before.forward)
        assert before.forward == digits.crossing(before.node_end)
    assert plan.stages[-1].forward == ()
    assert [o for s in plan.stages for o in s.outputs] == ["exit1", "exit2", "final"]
    assert plan.stages[0].input_specs[0].shape == ("batch", 1, 8, 8)


def test_fast_links_spread_a_stream_over_devices(digits: ModelGraph) -> None:
    devices = [PI4, ORIN, PHONE]
    one = plan_pipeline(digits, devices, _fast_links(devices), objective="latency", exits=())
    many = plan_pipeline(digits, devices, _fast_links(devices), objective="throughput", exits=())
    assert one.strategy == "single"  # with free links the fastest device alone minimises latency
    assert many.strategy == "pipeline" and len(many.stages) >= 2
    assert many.predicted_throughput_rps > 1.3 * one.predicted_throughput_rps
    assert many.bottleneck_s < one.bottleneck_s


def test_slow_links_keep_everything_on_one_device(digits: ModelGraph) -> None:
    slow = [
        LinkProfile(a.name, b.name, 0.05, 1e5)
        for a in (PI4, ORIN)
        for b in (PI4, ORIN)
        if a is not b
    ]
    plan = plan_pipeline(digits, [PI4, ORIN], slow, objective="throughput")
    assert {s.device for s in plan.stages} == {ORIN.name}


def test_predictions_add_up(digits: ModelGraph) -> None:
    plan = plan_cuts(digits, [PI4, PHONE], [12])
    cost = CostModel()
    for stage in plan.stages:
        assert stage.predicted_compute_s == pytest.approx(
            cost.segment_time(
                digits, PI4 if stage.device == PI4.name else PHONE, stage.node_start, stage.node_end
            )
        )
    hop = Links().transfer_time(PI4.name, PHONE.name, digits.crossing_bytes()[12])
    split = next(s for s in plan.stages if s.node_end == 12)
    assert split.predicted_transfer_s == pytest.approx(hop)
    assert plan.predicted_latency_s == pytest.approx(
        sum(s.predicted_compute_s + s.predicted_transfer_s for s in plan.stages)
    )


def test_faster_device_gets_the_work_in_a_latency_plan(digits: ModelGraph) -> None:
    plan = plan_single(digits, PI4)
    faster = plan_pipeline(digits, [PI4, ORIN])
    assert faster.predicted_latency_s < plan.predicted_latency_s
    assert {s.device for s in faster.stages} == {ORIN.name}


def test_memory_budget_forces_a_split_and_is_respected(digits: ModelGraph) -> None:
    budget = int(digits.total_param_bytes * 0.7)
    plan = plan_pipeline(digits, [PI4, ORIN, PHONE], memory_budgets=[budget] * 3, exits=())
    assert len({s.device_index for s in plan.stages}) >= 2
    assert all(s.memory_bytes <= budget for s in plan.stages)
    by_name = plan_pipeline(digits, [PI4, ORIN], memory_budgets={ORIN.name: 1000}, exits=())
    assert {s.device for s in by_name.stages} == {PI4.name}


def test_model_that_cannot_fit_is_refused_with_sizes(digits: ModelGraph) -> None:
    tiny = replace(PI4, mem_available_bytes=10_000)
    with pytest.raises(InfeasiblePlanError, match="MB"):
        plan_pipeline(digits, [tiny, replace(tiny, name="other")])


def test_exits_end_stages_even_on_one_device(tmp_path: Path) -> None:
    graph = ModelGraph.from_onnx(om.exits_mlp(tmp_path / "e.onnx"))
    plan = plan_single(graph, PHONE)
    assert [s.exit for s in plan.stages] == ["exit1", "exit2", "logits"]
    assert [e.stage_index for e in plan.exits] == [0, 1, 2]
    assert plan.exits[-1].final and not plan.exits[0].final
    assert all(s.predicted_transfer_s == 0 for s in plan.stages)
    only_two = plan_single(graph, PHONE, exits=["exit2"])
    assert [s.exit for s in only_two.stages] == ["exit2", "logits"]
    assert len(plan_single(graph, PHONE, exits=()).stages) == 1


def test_plan_json_round_trip_and_save_load(tmp_path: Path, digits: ModelGraph) -> None:
    plan = plan_pipeline(digits, [PI4, PHONE], objective="throughput")
    assert Plan.from_json(plan.to_json()) == plan
    plan.save(tmp_path)
    assert Plan.load(tmp_path / "plan.json", model_path=om.DIGITS_MODEL) == plan


def test_bad_arguments_say_what_to_do(digits: ModelGraph) -> None:
    with pytest.raises(PartitionError, match="objective"):
        plan_pipeline(digits, [PI4], objective="fastest")
    with pytest.raises(PartitionError, match="no devices"):
        plan_pipeline(digits, [])
    with pytest.raises(PartitionError, match="one per device"):
        plan_pipeline(digits, [PI4, ORIN], memory_budgets=[1])
    with pytest.raises(PartitionError, match="not exit heads"):
        plan_pipeline(digits, [PI4], exits=["exit9"])
    with pytest.raises(PartitionError, match="increasing"):
        plan_cuts(digits, [PI4, ORIN], [5, 3])


def test_plan_file_checks(tmp_path: Path) -> None:
    with pytest.raises(PartitionError, match="edge-runtime plan"):
        Plan.load(tmp_path)
    (tmp_path / "plan.json").write_text("{not json")
    with pytest.raises(PartitionError, match="not valid JSON"):
        Plan.load(tmp_path)
    (tmp_path / "plan.json").write_text('{"version": 99}')
    with pytest.raises(PartitionError, match="version 99"):
        Plan.load(tmp_path)
