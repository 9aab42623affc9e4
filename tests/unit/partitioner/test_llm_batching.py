"""The batching term of the LLM cost model: what a step of B sequences (or a prompt of
T tokens) costs against a single-stream step, per share, per tensor group, per pipeline.

Pure: device records and link tables in, seconds out; no process is started.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass

import pytest

from partitioner.errors import PartitionError
from partitioner.llm_cost import (
    DEFAULT_LLM_COST,
    LinkTable,
    LlmCostModel,
    batch_factor,
    group_time,
    kv_read_bytes,
    parse_link,
    share_time,
    step_time,
)
from partitioner.llm_pipeline import plan_llm_layout
from partitioner.llm_strategy import plan_llm_strategy, prefill_time
from partitioner.tensor_plan import DecoderShape

# ~1.1 GB of fp32 weights: the dev box's default `bench llm` shape, 4 layers
SHAPE = DecoderShape(hidden=2048, intermediate=5632, layers=4, heads=16, kv_heads=16,
                     head_dim=128, vocab=16000, max_context=1024)
M = DEFAULT_LLM_COST


@dataclass(frozen=True)
class Dev:
    name: str
    mem_bandwidth_gbps: float = 33.0
    gflops_fp32: float = 213.0
    disk_read_gbps: float = 1.5
    decode_gbps: float = 26.0
    host_decode_gbps: float = 0.0


def devs(n: int, **kw: float) -> list[Dev]:
    return [Dev(f"d{i}", **kw) for i in range(n)]  # type: ignore[arg-type]


def _one(shape: DecoderShape = SHAPE) -> tuple[object, LinkTable]:
    links = LinkTable.uniform(1, 0.0, math.inf, coordinator=False)
    return plan_llm_layout(shape, devs(1), [[0]], links=links), links


def test_the_factor_is_one_for_one_token_and_grows_with_sequences_and_prompts() -> None:
    assert batch_factor(1) == 1.0 and batch_factor(1, 1) == 1.0
    decode = [batch_factor(b) for b in range(1, 17)]
    assert all(a < b for a, b in itertools.pairwise(decode))
    prompt = [batch_factor(t, 1) for t in range(1, 257)]
    assert all(a < b for a, b in itertools.pairwise(prompt))
    # a further sequence costs a row; a further prompt token a row and its attention
    assert batch_factor(8, 1) > batch_factor(8)
    # the calibration: 4 sequences on dev ran 59.5 ms against 43.1 for one (1.38)
    assert batch_factor(4) == pytest.approx(59.5 / 43.1, rel=0.03)
    assert batch_factor(128, 1) == pytest.approx(620 / 43.1, rel=0.03)
    # batching pays: 8 sequences in one step cost far less than 8 steps
    assert batch_factor(8) < 2.0
    # the constants come from the model given
    assert batch_factor(4, model=LlmCostModel(packed_switch_fraction=0.0,
                                              batch_row_fraction=0.0)) == 1.0


def test_a_share_degenerates_to_the_single_stream_figure_and_is_monotonic() -> None:
    layout, _ = _one()
    share = layout.stages[0].plan.shares[0]  # type: ignore[attr-defined]
    rate = 26e9 * M.engine_efficiency
    one = share_time(SHAPE, share, 213.0, 1, rate)
    assert one == pytest.approx(share.weight_bytes / rate)
    times = [share_time(SHAPE, share, 213.0, b, rate) for b in range(1, 9)]
    assert all(a < b for a, b in itertools.pairwise(times))
    # each sequence reads its KV cache over the decode context too
    kv = kv_read_bytes(SHAPE, share, 4)
    assert kv == 2 * 4 * 16 * 128 * 4 * M.decode_context * 4
    assert times[3] == pytest.approx(one * batch_factor(4) + kv / rate)
    # compute-bound arithmetic still caps it: a device of 1 GFLOPS
    slow = share_time(SHAPE, share, 1.0, 8, rate)
    assert slow == pytest.approx(2.0 * share.weight_bytes / 4 * 8 / 1e9)


def test_a_batched_step_costs_less_than_its_streams_alone_and_more_than_one() -> None:
    layout, links = _one()
    plans = [s.plan for s in layout.stages]  # type: ignore[attr-defined]
    rates = [26e9 * M.engine_efficiency]
    single = step_time(plans, [[0]], [213.0], links, 1, 1, rates=rates)
    assert single == pytest.approx(layout.predicted_s_per_token)  # type: ignore[attr-defined]
    steps = [step_time(plans, [[0]], [213.0], links, b, 1, rates=rates) for b in (1, 2, 4, 8)]
    assert all(a < b for a, b in itertools.pairwise(steps))
    tokens_per_s = [b / s for b, s in zip((1, 2, 4, 8), steps, strict=True)]
    assert all(a < b for a, b in itertools.pairwise(tokens_per_s))
    assert tokens_per_s[2] < 4 / single  # the batching term: less than 4× one stream
    # with no batching cost the step would read the weights once: nearly 4×
    free = LlmCostModel(packed_switch_fraction=0.0, batch_row_fraction=0.0,
                        sequence_overhead_s=0.0, decode_context=0)
    assert 4 / step_time(plans, [[0]], [213.0], links, 4, 1, model=free, rates=rates) > \
        3.9 / single


def test_tensor_parallel_batches_pay_larger_allreduces_on_a_slow_link() -> None:
    fast = LinkTable.uniform(2, 100e-6, 2e9)
    slow = LinkTable.uniform(2, *parse_link("wifi"))
    extra = {}
    for name, links in (("fast", fast), ("slow", slow)):
        layout = plan_llm_layout(SHAPE, devs(2), [[0, 1]], links=links)
        plan = layout.stages[0].plan
        rates = [26e9 * M.engine_efficiency] * 2
        one = group_time(plan, [0, 1], [213.0] * 2, links, 1, 1, rates=rates)
        four = group_time(plan, [0, 1], [213.0] * 2, links, 4, 4, rates=rates)
        assert four > one
        extra[name] = four - one
    # 4 rows of every allreduce at 50 Mbit/s: 8 allreduces × 3 × 8 KB more on the wire
    assert extra["slow"] > extra["fast"] + 8 * 3 * 8192 / slow.bandwidth[0][1]


def test_pipeline_throughput_rises_with_micro_batches_up_to_the_stages() -> None:
    """Where rows cost (little arithmetic per byte) a pipeline cut into micro-batches
    keeps its stages busy: tokens/s rises up to one micro-batch per stage; where decode
    is memory-bound each micro-batch reads the weights again and one batch stays best."""
    links = LinkTable.uniform(3, 100e-6, 2e9)
    slow = devs(3, gflops_fp32=2.0)
    layout = plan_llm_layout(SHAPE, slow, [[0], [1], [2]], streams=6, links=links)
    plans = [s.plan for s in layout.stages]
    gflops = [2.0] * 3
    rates = [26e9 * M.engine_efficiency] * 3
    rate = [6 / step_time(plans, [[0], [1], [2]], gflops, links, 6, m, rates=rates)
            for m in (1, 2, 3)]
    assert rate[0] < rate[1] < rate[2]
    assert layout.micro_batches == 3
    fast = plan_llm_layout(SHAPE, devs(3), [[0], [1], [2]], streams=4, links=links)
    assert fast.micro_batches == 1
    assert fast.predicted_tokens_per_s > 1 / fast.predicted_s_per_token


def test_the_throughput_choice_sees_the_batching_cost() -> None:
    """Predicted tokens/s at 4 streams is what one batched step gives: less than 4× the
    single-stream rate for every strategy."""
    links = LinkTable.uniform(3, 100e-6, 2e9)
    for strategy in ("single", "tensor", "pipeline", "hybrid"):
        layout = plan_llm_strategy(SHAPE, devs(3), strategy, links=links, streams=4)
        assert 1 / layout.predicted_s_per_token < layout.predicted_tokens_per_s < \
            4 / layout.predicted_s_per_token


def test_time_to_first_token_is_the_prompt_step() -> None:
    links = LinkTable.uniform(2, 100e-6, 2e9)
    devices = devs(2)
    layout = plan_llm_layout(SHAPE, devices, [[0], [1]], links=links)
    plans = [s.plan for s in layout.stages]
    rates = [26e9 * M.engine_efficiency] * 2
    expect = step_time(plans, [[0], [1]], [213.0] * 2, links, 128, 2, rows=1, rates=rates)
    assert prefill_time(layout, devices, links, 128) == pytest.approx(expect)
    ttft = [prefill_time(layout, devices, links, t) for t in (1, 16, 128)]
    assert ttft[0] == pytest.approx(layout.predicted_s_per_token, rel=0.05)
    assert ttft[0] < ttft[1] < ttft[2]
    # the calibration: a 128-token prompt through one 1.08 GB share ran 620 ms on dev
    one, one_links = _one()
    alone = prefill_time(one, devs(1), one_links, 128)  # type: ignore[arg-type]
    assert alone == pytest.approx(0.620, rel=0.15)
    with pytest.raises(PartitionError, match="not among"):
        prefill_time(layout, [dataclasses.replace(devices[0], name="x")], links, 8)


def test_members_sharing_a_machine_share_its_memory_not_their_cores() -> None:
    """Two agents on one 2-core machine read their weights through its one memory, but
    each does the arithmetic of its own rows: batching costs them less, relative to
    their (memory-bound) single step, than it costs one device."""
    rate = 26e9 * M.engine_efficiency
    shared = dataclasses.replace(LinkTable.uniform(2, 100e-6, 2e9), hosts=("h", "h"),
                                 cores=(2, 2))
    layout = plan_llm_layout(SHAPE, devs(2), [[0, 1]], links=shared)
    plan = layout.stages[0].plan
    one, four = (group_time(plan, [0, 1], [213.0] * 2, shared, b, b, rates=[rate] * 2,
                            host_rates=[rate] * 2) for b in (1, 4))
    weights = sum(s.weight_bytes for s in plan.shares) / rate
    # the machine's read of both shares bounds the step ...
    assert one > weights
    # ... and four sequences add the switch on that read and one share's rows (and
    # 3 rows more through each of the 8 allreduces: 0.1 ms on this link)
    rows = plan.shares[0].weight_bytes / rate * 3 * M.batch_row_fraction
    assert four - one == pytest.approx(weights * M.packed_switch_fraction + rows, abs=5e-4)
    alone, _ = _one()
    plans = [s.plan for s in alone.stages]  # type: ignore[attr-defined]
    single = [step_time(plans, [[0]], [213.0], _one()[1], b, 1, rates=[rate]) for b in (1, 4)]
    assert four / one < single[1] / single[0]
