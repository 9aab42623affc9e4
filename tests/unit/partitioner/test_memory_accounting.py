"""The planner charges a device what its agent will: the sum over the stages it holds.

An agent keeps each stage in its own onnxruntime session and admits a stage only
while the sum of its stages' `memory_bytes` stays within its budget
(`partitioner.admits`, called by the agent's deploy handler). Exit cuts split a
device's segment into several stages, each with its own peak of live activations,
so the planner must sum them too, or it accepts plans the agent then refuses.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devices import LinkProfile, presets
from partitioner import (
    InfeasiblePlanError,
    ModelGraph,
    Plan,
    SegmentMemory,
    admits,
    device_bytes,
    overcommitted,
    plan_pipeline,
    plan_single,
)
from partitioner.pipeline import stage_memory
from support import onnx_models as om

PI4, ORIN, PHONE = (presets.get(n) for n in ("pi4", "jetson-orin-nano", "phone"))
DEVICES = [PI4, ORIN, PHONE]
LINKS = [LinkProfile(a.name, b.name, rtt_s=1e-4, bandwidth_bytes_per_s=1e8)
         for a in DEVICES for b in DEVICES if a is not b]


@pytest.fixture(scope="module")
def digits() -> ModelGraph:
    return ModelGraph.from_onnx(om.DIGITS_MODEL)


def agent_refusals(plan: Plan, budgets: dict[str, int]) -> list[str]:
    """Replay a deploy against the agents' rule: stages load last-first (as
    `Cluster.deploy` does), each charged its `memory_bytes` beside what its agent
    already holds. Returns the stages an agent would refuse."""
    held: dict[str, int] = defaultdict(int)
    refused = []
    for stage in reversed(plan.stages):
        need = int(stage.memory_bytes)
        assert need > 0  # the SDK sends it as the stage's memory_bytes (0 would mean "unknown")
        if not admits(held[stage.device], need, budgets.get(stage.device)):
            refused.append(f"stage {stage.index} on {stage.device}")
            continue
        held[stage.device] += need
    return refused


def test_one_device_with_exits_is_charged_the_sum_of_its_stages(digits: ModelGraph) -> None:
    whole = plan_single(digits, ORIN)  # stages end at both exit heads
    assert len(whole.stages) == 3
    need = device_bytes(whole.stages)[ORIN.name]
    assert need == sum(s.memory_bytes for s in whole.stages)
    # Counting the device's weights and one peak (the old rule) is less: a budget
    # between the two is exactly where the planner used to accept what agents refuse.
    params, live = stage_memory(digits)
    counted_once = int(params[-1] + live.max())
    assert counted_once < need
    at_budget = plan_single(digits, ORIN, memory_budget=need)
    assert agent_refusals(at_budget, {ORIN.name: need}) == []
    for budget in (need - 1, counted_once):
        with pytest.raises(InfeasiblePlanError, match="needs about"):
            plan_single(digits, ORIN, memory_budget=budget)
    # Without exits the device runs one stage, charged once.
    assert device_bytes(plan_single(digits, ORIN, exits=()).stages)[ORIN.name] == counted_once


def test_segment_memory_matches_the_stages_it_becomes(digits: ModelGraph) -> None:
    params, live = stage_memory(digits)
    cuts = [h.position for h in digits.exits]
    memory = SegmentMemory(params, live, cuts)
    n = len(digits.nodes)
    for p in range(n):
        for q in range(p + 1, n + 1):
            pieces = memory.pieces(p, q)
            assert pieces[0][0] == p and pieces[-1][1] == q
            assert all(p < c < q for _, c in pieces[:-1])
            want = sum(int(params[b] - params[a] + live[a:b].max()) for a, b in pieces)
            assert memory.bytes(p, q) == want
    rng = np.random.default_rng(0)
    for budget in rng.uniform(0, memory.bytes(0, n) * 1.1, size=20):
        lo = memory.lowest_starts(float(budget))
        for q in range(1, n + 1):
            brute = next((p for p in range(q) if memory.bytes(p, q) <= budget), q)
            assert lo[q] == brute


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shares=st.lists(st.floats(0.15, 1.2), min_size=3, max_size=3),
    objective=st.sampled_from(["latency", "throughput"]),
    exits=st.sampled_from([None, ("exit1",), ("exit2",), ()]),
)
def test_a_plan_the_planner_accepts_is_never_refused_by_the_agents(
    digits: ModelGraph, shares: list[float], objective: str, exits: tuple[str, ...] | None
) -> None:
    total = SegmentMemory(*stage_memory(digits), [h.position for h in digits.exits]).bytes(
        0, len(digits.nodes))
    budgets = {d.name: int(total * share) for d, share in zip(DEVICES, shares, strict=True)}
    try:
        plan = plan_pipeline(digits, DEVICES, LINKS, objective=objective,
                             memory_budgets=list(budgets.values()), exits=exits)
    except InfeasiblePlanError:
        return  # refusing is always safe; accepting must be honest
    assert agent_refusals(plan, budgets) == []
    assert overcommitted(plan.stages, dict(budgets)) == {}


def test_overcommitted_names_the_device_and_its_sum(digits: ModelGraph) -> None:
    plan = plan_single(digits, PHONE)
    need = device_bytes(plan.stages)[PHONE.name]
    assert overcommitted(plan.stages, {PHONE.name: need}) == {}
    assert overcommitted(plan.stages, {PHONE.name: need - 1}) == {PHONE.name: need}
    assert overcommitted(plan.stages, {}) == {}  # no budget: unlimited
    # A stage whose recorded bytes were edited by hand is caught the same way.
    bigger = replace(plan, stages=(replace(plan.stages[0], memory_bytes=need), *plan.stages[1:]))
    assert PHONE.name in overcommitted(bigger.stages, {PHONE.name: need})
