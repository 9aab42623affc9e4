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
    decode_gbps: float = 0.0  # 0: unmeasured, the model's engine efficiency applies
    host_decode_gbps: float = 0.0


def devs(*bw: float) -> list[Dev]:
    """Devices whose engine decodes at their memory bandwidth (the probe reads that
    much more than the engine keeps)."""
    return [Dev(f"d{i}", b, decode_gbps=b / DEFAULT_LLM_COST.engine_efficiency)
            for i, b in enumerate(bw)]


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
    """Four devices that hold the model only together (1.1 GB budgets each). A slow
    Wi-Fi (20 ms round trip): at 5 ms the groups' allreduces (one exchange between
    partners, recursive doubling) still cost less than they save on this 3.5 GB model."""
    budgets = [GB + (100 << 20)] * 4
    fast = plan_llm_strategy(SHAPE, devs(8, 8, 8, 8), memory_budgets=budgets,
                             links=LinkTable.uniform(4, 100e-6, 1e9))
    wifi = plan_llm_strategy(SHAPE, devs(8, 8, 8, 8), memory_budgets=budgets,
                             links=LinkTable.uniform(4, 0.02, 6e6))
    assert fast.strategy == "tensor"
    assert wifi.strategy == "pipeline"
    assert len(wifi.stages) == 4  # fewer devices cannot hold it resident
    assert "best latency: pipeline" in wifi.reason
    assert {p.strategy for p in wifi.predictions} == {"single", "tensor", "pipeline", "hybrid"}
    by = {p.strategy: p for p in wifi.predictions}
    assert by["pipeline"].s_per_token < by["tensor"].s_per_token
    assert by["single"].s_per_token > by["pipeline"].s_per_token  # it streams from disk


def test_a_device_that_holds_the_model_serves_alone_over_slow_links() -> None:
    layout = plan_llm_strategy(SHAPE, devs(8, 8, 8), links=LinkTable.uniform(3, 0.02, 6e6))
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


def test_weights_stream_at_the_measured_decode_rate() -> None:
    """The engine streams weights slower than its device's probes: the decode probe
    (or, unmeasured, the bare read) times the engine's efficiency sets the prediction."""
    from partitioner.llm_cost import LlmCostModel, decode_rate

    links = LinkTable.uniform(1, 0.0, math.inf, coordinator=False)
    m = DEFAULT_LLM_COST
    probe = Dev("d0", 8.0, decode_gbps=4.0)
    bare = Dev("d0", 8.0)
    assert decode_rate(probe) == pytest.approx(4e9 * m.engine_efficiency)
    unprobed = 8e9 * m.bare_read_fraction * m.engine_efficiency
    assert decode_rate(bare) == pytest.approx(unprobed)
    assert decode_rate(probe, LlmCostModel(engine_efficiency=1.0)) == 4e9
    for dev, rate in ((probe, 4e9 * m.engine_efficiency), (bare, unprobed)):
        layout = plan_llm_layout(SHAPE, [dev], [[0]], links=links)
        weights = layout.stages[0].plan.shares[0].weight_bytes
        assert layout.predicted_s_per_token == pytest.approx(
            weights / rate + SHAPE.layers * m.layer_overhead_s + m.step_overhead_s
            + 4 * m.message_overhead_s)
    # faster decoders take more layers: the split follows the decode rates
    split = plan_llm_layout(SHAPE, [Dev("a", 8.0, decode_gbps=6.0),
                                    Dev("b", 8.0, decode_gbps=2.0)], [[0], [1]])
    assert [s.layers for s in split.stages] == [(0, 12), (12, 16)]


def test_agents_on_one_machine_share_its_memory() -> None:
    """A tensor group of three agents on one machine reads its weights together no
    faster than the machine's all-core decode rate; apart, each at its own."""
    links = LinkTable.uniform(3, 100e-6, 2e9)
    shared = dataclasses.replace(links, hosts=("h",) * 3, cores=(4,) * 3)
    group = [Dev(f"d{i}", 8.0, decode_gbps=8.0, host_decode_gbps=12.0) for i in range(3)]
    own_rate, host_rate = (g * 1e9 * DEFAULT_LLM_COST.engine_efficiency for g in (8, 12))
    apart = plan_llm_layout(SHAPE, group, [[0, 1, 2]], links=links)
    together = plan_llm_layout(SHAPE, group, [[0, 1, 2]], links=shared)
    weights = sum(s.weight_bytes for s in together.stages[0].plan.shares)
    own = max(s.weight_bytes for s in apart.stages[0].plan.shares) / own_rate
    assert together.predicted_s_per_token - apart.predicted_s_per_token == pytest.approx(
        weights / host_rate - own)
    # a pipeline's stages take turns: one stream never reads two at once
    pipe = [plan_llm_layout(SHAPE, group, [[0], [1], [2]], links=t) for t in (links, shared)]
    assert pipe[0].predicted_s_per_token == pytest.approx(pipe[1].predicted_s_per_token)


def test_a_stage_records_and_is_priced_by_its_allreduce_choice() -> None:
    """A tensor stage's plan names the allreduce per payload size the cost model found
    fastest on its links (its agents run it), and the prediction uses that algorithm:
    on a 5 ms link a pair exchanges in one one-way hop, not a star's round trip."""
    from transports.cost import allreduce_time, pick, star_allreduce_time

    links = LinkTable.uniform(2, 0.005, 6e6)
    layout = plan_llm_layout(SHAPE, devs(8, 8), [[0, 1]], links=links)
    plan = layout.stages[0].plan
    vector = SHAPE.hidden * 4
    name = pick(plan.allreduce, vector)
    assert plan.allreduce and name != "star"
    lat, bw = links.matrices([0, 1])
    m = DEFAULT_LLM_COST
    chosen = allreduce_time(name, vector, plan.hub, lat, bw, m.message_overhead_s)
    assert chosen < star_allreduce_time(vector, plan.hub, lat, bw, m.message_overhead_s)
    starred = dataclasses.replace(plan, allreduce=(((1 << 40), "star"),))
    from partitioner.llm_cost import group_time

    delta = (group_time(starred, [0, 1], [50.0] * 2, links, 1, 1)
             - group_time(plan, [0, 1], [50.0] * 2, links, 1, 1))
    assert delta == pytest.approx(2 * SHAPE.layers * (
        star_allreduce_time(vector, plan.hub, lat, bw, m.message_overhead_s) - chosen))
    # one device: no collectives, nothing to choose
    assert plan_llm_layout(SHAPE, devs(8, 8), [[0], [1]]).stages[0].plan.allreduce == ()


def test_a_profile_from_before_the_decode_probe_still_plans() -> None:
    """A cached profile written before `decode_gbps` existed reads back with 0 (not
    measured) and is priced from its bare read; a measured one round-trips its probes."""
    from devices.measure import decode_gbps
    from devices.presets import get as preset
    from devices.profile import DeviceProfile
    from partitioner.llm_cost import decode_rate, host_decode_rate

    old = preset("raspberry-pi-5").to_dict()
    for field in ("decode_gbps", "host_decode_gbps"):
        old.pop(field)
    profile = DeviceProfile.from_dict(old)
    assert profile.decode_gbps == 0.0 and host_decode_rate(profile) == math.inf
    m = DEFAULT_LLM_COST
    assert decode_rate(profile) == pytest.approx(
        profile.mem_bandwidth_gbps * 1e9 * m.bare_read_fraction * m.engine_efficiency)
    probed = dataclasses.replace(profile, decode_gbps=round(decode_gbps(budget_s=0.03), 3),
                                 host_decode_gbps=1.5)
    assert probed.decode_gbps > 0
    assert DeviceProfile.from_json(probed.to_json()) == probed
    assert decode_rate(probed) == pytest.approx(probed.decode_gbps * 1e9 * m.engine_efficiency)
