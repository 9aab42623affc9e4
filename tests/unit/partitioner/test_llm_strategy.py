"""The LLM strategy planner: layer ranges, predictions from the α-β model, the choice.

Pure: device records and link tables in, layouts out; no process is started.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import pytest

from partitioner.errors import InfeasiblePlanError, PartitionError
from partitioner.llm_cost import DEFAULT_LLM_COST, LinkTable, step_time
from partitioner.llm_layout import LlmLayout
from partitioner.llm_pipeline import layer_bytes, plan_llm_layout, split_layers
from partitioner.llm_strategy import candidates, link_order, plan_llm_strategy
from partitioner.tensor_plan import DecoderShape, TensorPlan
from transports.cost import hop_time, star_allreduce_time

# ~3.5 GB of fp32 weights, 16 layers of 205 MB
SHAPE = DecoderShape(hidden=2048, intermediate=5632, layers=16, heads=16, kv_heads=16,
                     head_dim=128, vocab=32000, max_context=512)
GB = 1 << 30


@dataclass(frozen=True)
class Dev:
    name: str
    mem_bandwidth_gbps: float
    gflops_fp32: float = 50.0
    disk_read_gbps: float = 0.1


def devs(*bw: float) -> list[Dev]:
    return [Dev(f"d{i}", b) for i, b in enumerate(bw)]


def test_layers_follow_speed_and_memory() -> None:
    assert split_layers(SHAPE, [3.0, 1.0]) == [(0, 12), (12, 16)]
    assert split_layers(SHAPE, [1.0, 1.0, 1.0, 1.0]) == [(0, 4), (4, 8), (8, 12), (12, 16)]
    # the fast stage holds only 6 layers resident: the others take the rest
    assert split_layers(SHAPE, [3.0, 1.0, 1.0], [6.0, math.inf, math.inf]) == [
        (0, 6), (6, 11), (11, 16)]
    # budgets that cannot hold the model: proportional, every stage streams
    assert split_layers(SHAPE, [3.0, 1.0], [2.0, 2.0]) == [(0, 12), (12, 16)]
    with pytest.raises(InfeasiblePlanError, match="stages"):
        split_layers(SHAPE, [1.0] * 17)


def test_a_layout_is_stages_of_tensor_plans_and_round_trips() -> None:
    layout = plan_llm_layout(SHAPE, devs(10, 10, 5), [[0, 1], [2]], streams=4)
    assert layout.strategy == "hybrid"
    first, last = layout.stages
    assert first.layers == (0, 13) and last.layers == (13, 16)
    assert all(s.layers == (0, 13) for s in first.plan.shares)
    assert sum(s.n_kv_heads for s in first.plan.shares) == SHAPE.kv_heads
    assert [s.n_vocab_rows for s in last.plan.shares] == [SHAPE.vocab]
    assert all(s.n_vocab_rows == 0 for s in first.plan.shares)
    assert first.hop_s > 0 and last.hop_s == 0
    again = LlmLayout.from_json(layout.to_json())
    assert again == layout
    # a stage's plan is a tensor plan the agents parse as any other
    assert TensorPlan.from_json(first.plan.to_json()) == first.plan


def test_the_prediction_is_the_alpha_beta_model() -> None:
    """One stream through two single-device stages: compute of each, one hop, and the
    coordinator's request and logits, with the formulas of transports.cost."""
    links = LinkTable.uniform(2, 0.004, 10e6)
    layout = plan_llm_layout(SHAPE, devs(8, 8), [[0], [1]], links=links)
    m = DEFAULT_LLM_COST
    compute = [st.plan.shares[0].compute_s_per_token for st in layout.stages]
    per_stage = [c + (b - a) * m.layer_overhead_s + m.step_overhead_s
                 for c, (a, b) in zip(compute, [s.layers for s in layout.stages], strict=True)]
    hop = hop_time(SHAPE.hidden * 4, 0.002, 10e6, m.message_overhead_s)
    io = 2 * (0.002 + 2 * m.message_overhead_s) + (SHAPE.vocab * 4 + 8) / 10e6
    assert layout.predicted_s_per_token == pytest.approx(sum(per_stage) + hop + io)
    tensor = plan_llm_layout(SHAPE, devs(8, 8), [[0, 1]], links=links)
    lat, bw = links.matrices([0, 1])
    ar = star_allreduce_time(SHAPE.hidden * 4, tensor.stages[0].plan.hub, lat, bw,
                             m.message_overhead_s)
    assert tensor.predicted_s_per_token > 2 * SHAPE.layers * ar


def test_fast_links_choose_tensor_and_wifi_chooses_a_pipeline() -> None:
    """Four devices that hold the model only together (1.1 GB budgets each)."""
    budgets = [GB + (100 << 20)] * 4
    fast = plan_llm_strategy(SHAPE, devs(8, 8, 8, 8), memory_budgets=budgets,
                             links=LinkTable.uniform(4, 100e-6, 1e9))
    wifi = plan_llm_strategy(SHAPE, devs(8, 8, 8, 8), memory_budgets=budgets,
                             links=LinkTable.uniform(4, 0.005, 6e6))
    assert fast.strategy == "tensor"
    assert wifi.strategy == "pipeline"
    assert len(wifi.stages) == 4  # fewer devices cannot hold it resident
    assert "best latency: pipeline" in wifi.reason
    assert {p.strategy for p in wifi.predictions} == {"single", "tensor", "pipeline", "hybrid"}
    by = {p.strategy: p for p in wifi.predictions}
    assert by["pipeline"].s_per_token < by["tensor"].s_per_token
    assert by["single"].s_per_token > by["pipeline"].s_per_token  # it streams from disk


def test_a_device_that_holds_the_model_serves_alone_over_slow_links() -> None:
    layout = plan_llm_strategy(SHAPE, devs(8, 8, 8), links=LinkTable.uniform(3, 0.005, 6e6))
    assert layout.strategy == "single"


def test_two_wired_pairs_on_wifi_form_a_hybrid() -> None:
    """d0-d1 and d2-d3 are wired pairs (0.2 ms), the pairs are 6 ms apart on Wi-Fi."""
    near, far = 0.0001, 0.003
    lat = [[0.0 if i == j else (near if i // 2 == j // 2 else far) for j in range(4)]
           for i in range(4)]
    bw = [[math.inf if i == j else (1e9 if i // 2 == j // 2 else 6e6) for j in range(4)]
          for i in range(4)]
    links = LinkTable(tuple(map(tuple, lat)), tuple(map(tuple, bw)), 0.001, 1e8)
    budgets = [GB + (100 << 20)] * 4
    layout = plan_llm_strategy(SHAPE, devs(8, 8, 8, 8), memory_budgets=budgets, links=links)
    assert layout.strategy == "hybrid"
    assert sorted(sorted(g) for g in layout.groups) == [["d0", "d1"], ["d2", "d3"]]
    assert link_order(devs(8, 8, 8, 8), links)[:2] in ([0, 1], [1, 0])


def test_throughput_counts_streams_and_micro_batches() -> None:
    # compute-bound devices (little arithmetic, much bandwidth): micro-batches pay
    slow = [Dev(f"d{i}", 50.0, gflops_fp32=2.0) for i in range(3)]
    layout = plan_llm_layout(SHAPE, slow, [[0], [1], [2]], streams=6,
                             links=LinkTable.uniform(3, 100e-6, 1e9))
    assert layout.micro_batches == 3
    plans = [s.plan for s in layout.stages]
    gflops = [2.0] * 3
    links = LinkTable.uniform(3, 100e-6, 1e9)
    whole = step_time(plans, [[0], [1], [2]], gflops, links, 6, 1)
    assert layout.predicted_tokens_per_s == pytest.approx(
        6 / step_time(plans, [[0], [1], [2]], gflops, links, 6, 3))
    assert layout.predicted_tokens_per_s > 6 / whole
    best = plan_llm_strategy(SHAPE, slow, objective="throughput", streams=6,
                             links=LinkTable.uniform(3, 100e-6, 1e9))
    assert best.objective == "throughput" and best.predicted_tokens_per_s > 0


def test_an_asked_strategy_and_errors() -> None:
    layout = plan_llm_strategy(SHAPE, devs(8, 4), "pipeline")
    assert layout.strategy == "pipeline" and "as asked" in layout.reason
    with pytest.raises(InfeasiblePlanError, match="pipeline"):
        plan_llm_strategy(SHAPE, devs(8), "pipeline")
    with pytest.raises(PartitionError, match="strategy"):
        plan_llm_strategy(SHAPE, devs(8), "ring")
    tiny = [4 << 20] * 2  # not even one block in the window
    with pytest.raises(InfeasiblePlanError):
        plan_llm_strategy(SHAPE, devs(8, 8), memory_budgets=tiny)
    assert all(len(g) == 1 for g in next(iter(candidates("pipeline", devs(1, 2, 3),
                                                         LinkTable.uniform(3, 0.001, 1e8),
                                                         16))))
    assert layer_bytes(SHAPE) == SHAPE.kv_heads * SHAPE.kv_group_bytes() + \
        SHAPE.intermediate * SHAPE.mlp_column_bytes()


def test_agents_sharing_a_machine_share_its_cores() -> None:
    """Three agents on one 2-core machine: a tensor group of the three runs 1.5x slower
    and waits a scheduler slice per collective; a pipeline's stages take turns."""
    links = LinkTable.uniform(3, 100e-6, 2e9)
    shared = dataclasses.replace(links, hosts=("h",) * 3, cores=(2,) * 3)
    apart = plan_llm_layout(SHAPE, devs(8, 8, 8), [[0, 1, 2]], links=links)
    together = plan_llm_layout(SHAPE, devs(8, 8, 8), [[0, 1, 2]], links=shared)
    compute = max(s.compute_s_per_token for s in apart.stages[0].plan.shares)
    collectives = 2 * SHAPE.layers + 1
    assert together.predicted_s_per_token == pytest.approx(
        apart.predicted_s_per_token + 0.5 * compute
        + collectives * DEFAULT_LLM_COST.oversubscribed_wait_s)
    pipe = [plan_llm_layout(SHAPE, devs(8, 8, 8), [[0], [1], [2]], links=t) for t in
            (links, shared)]
    assert pipe[0].predicted_s_per_token == pytest.approx(pipe[1].predicted_s_per_token)
    two = dataclasses.replace(links, hosts=("h",) * 3, cores=(4,) * 3)
    assert plan_llm_layout(SHAPE, devs(8, 8, 8), [[0, 1, 2]], links=two) \
        .predicted_s_per_token == pytest.approx(apart.predicted_s_per_token)
