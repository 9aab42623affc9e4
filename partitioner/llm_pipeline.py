"""Pipeline (and hybrid) layouts of a decoder LLM: contiguous layer ranges per stage.

Why ranges sized by speed: with several streams in flight every stage works at once,
so the slowest stage sets tokens/s; each stage's layers are therefore proportional to
its group's summed memory bandwidth (decode streams every weight once per token), at
least one layer each. Memory: a group whose budgets hold fewer layers than that share
keeps what fits (water-filling, the rest goes to stages with room); when the budgets
together cannot hold the model resident, the split stays proportional and each share
streams its range through its layer window (the window = budget − KV cache of its own
layers − activations; `plan_tensor_parallel(streaming=True)` sizes it and refuses a
window below the largest block).

Each stage is planned by `plan_tensor_parallel` over a shape of its own layer count
(and vocabulary only for the last stage, which holds the final norm and LM head), then
its shares are given their `layers` range and the full model's shape: a stage is a
tensor plan that the agents, slices and worker read as any other.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from partitioner.errors import InfeasiblePlanError, PartitionError
from partitioner.llm_cost import (
    DEFAULT_BANDWIDTH,
    DEFAULT_LLM_COST,
    DEFAULT_RTT_S,
    LinkTable,
    LlmCostModel,
    activation_hop,
    decode_rate,
    group_time,
    host_decode_rate,
    stage_schedule,
    step_time,
)
from partitioner.llm_layout import LlmLayout, LlmStage, strategy_of
from partitioner.tensor import ACTIVATION_RESERVE_BYTES, DeviceLike, plan_tensor_parallel
from partitioner.tensor_plan import DecoderShape, TensorPlan


def layer_bytes(shape: DecoderShape) -> int:
    """Weight bytes of one whole layer (every head, every column)."""
    return shape.kv_heads * shape.kv_group_bytes() + shape.intermediate * shape.mlp_column_bytes()


def split_layers(shape: DecoderShape, speeds: Sequence[float],
                 capacities: Sequence[float] | None = None) -> list[tuple[int, int]]:
    """Contiguous layer ranges, one per stage, proportional to `speeds` (≥ 1 layer each):
    layers go one at a time to the stage whose layers per speed stay lowest, which
    minimises the slowest stage. `capacities` (layers each stage holds resident) cap the
    stages when together they hold the model; otherwise every stage streams anyway and
    the split stays proportional."""
    n, total = len(speeds), shape.layers
    if n > total:
        raise InfeasiblePlanError(f"{n} stages for a model of {total} layers: use at "
                                  "most as many stages as layers")
    caps = [total] * n if capacities is None else [
        total if c == math.inf else max(1, math.floor(c)) for c in capacities]
    if sum(caps) < total:
        caps = [total] * n
    counts = [1] * n
    for _ in range(total - n):
        room = [i for i in range(n) if counts[i] < caps[i]]
        i = min(room, key=lambda i: ((counts[i] + 1) / max(speeds[i], 1e-12), -speeds[i], i))
        counts[i] += 1
    ranges, start = [], 0
    for c in counts:
        ranges.append((start, start + c))
        start += c
    return ranges


def _capacity(shape: DecoderShape, budgets: Sequence[int | None]) -> float:
    """Layers a group's budgets hold resident (weights and KV cache of every head)."""
    if any(b is None for b in budgets):
        return math.inf
    per_layer = layer_bytes(shape) + shape.kv_cache_bytes(shape.kv_heads) / shape.layers
    room = sum(max(0, int(b or 0) - ACTIVATION_RESERVE_BYTES) for b in budgets)
    return room / per_layer


def plan_stage(shape: DecoderShape, layers: tuple[int, int], devices: Sequence[DeviceLike],
               budgets: Sequence[int | None], rtts: dict[tuple[int, int], float] | None,
               model_digest: str) -> TensorPlan:
    """The tensor plan of one stage: its group over the layers [start, end)."""
    first, end = layers
    last = end == shape.layers
    sub = replace(shape, layers=end - first, vocab=shape.vocab if last else 0)
    plan = plan_tensor_parallel(sub, devices, memory_budgets=list(budgets), links=rtts or None,
                                streaming=True, model_digest=model_digest)
    shares = tuple(replace(s, layers=layers) for s in plan.shares)
    return replace(plan, shape=shape, shares=shares)


def plan_llm_layout(shape: DecoderShape, devices: Sequence[DeviceLike],
                    groups: Sequence[Sequence[int]], *,
                    memory_budgets: Sequence[int | None] | None = None,
                    links: LinkTable | None = None, streams: int = 1,
                    model: LlmCostModel = DEFAULT_LLM_COST, model_digest: str = "",
                    ) -> LlmLayout:
    """A layout of stages, `groups[k]` the device indices of stage k, in order.

    Raises `InfeasiblePlanError` when a window cannot hold a block, or there are more
    stages than layers."""
    n = len(devices)
    used = [i for g in groups for i in g]
    if not groups or any(not g for g in groups) or len(set(used)) != len(used) or any(
            not 0 <= i < n for i in used):
        raise PartitionError(f"groups {groups} must name distinct devices 0..{n - 1}, "
                             "each stage at least one")
    budgets = list(memory_budgets) if memory_budgets is not None else [None] * n
    table = links or LinkTable.uniform(n, DEFAULT_RTT_S, DEFAULT_BANDWIDTH, coordinator=False)
    rates = [decode_rate(d, model) for d in devices]
    host_rates = [host_decode_rate(d, model) for d in devices]
    top = max(rates) or 1.0  # relative speeds, rounded: equal stages tie exactly
    speeds = [round(sum(rates[i] for i in g) / top, 9) for g in groups]
    caps = [_capacity(shape, [budgets[i] for i in g]) for g in groups]
    ranges = split_layers(shape, speeds, caps)
    digest = model_digest or shape.digest()
    plans = [replace(plan_stage(shape, r, [devices[i] for i in g], [budgets[i] for i in g],
                                table.rtts(g) if len(g) > 1 else None, digest),
                     allreduce=stage_schedule(shape, g, table, model))
             for r, g in zip(ranges, groups, strict=True)]
    gflops = [float(d.gflops_fp32) for d in devices]
    members = [list(g) for g in groups]
    stages = []
    for k, (plan, r) in enumerate(zip(plans, ranges, strict=True)):
        hop = (activation_hop(shape, members[k][plan.hub], members[k + 1], table, 1, model)
               if k + 1 < len(plans) else 0.0)
        stages.append(LlmStage(k, r, plan, group_time(plan, members[k], gflops, table, 1, 1,
                                                      model, rates, host_rates), hop))
    s_token = step_time(plans, members, gflops, table, 1, 1, model=model, rates=rates,
                        host_rates=host_rates)
    # micro-batches pay where a stage's time grows with its tokens (compute-bound steps);
    # a memory-bound decode step reads the weights once whatever it carries
    many, micro = min((step_time(plans, members, gflops, table, streams, m, model=model,
                                 rates=rates, host_rates=host_rates), m)
                      for m in range(1, max(1, min(streams, len(plans))) + 1))
    strategy = strategy_of([len(g) for g in groups])
    return LlmLayout(shape=shape, strategy=strategy, stages=tuple(stages),
                     predicted_s_per_token=s_token, predicted_tokens_per_s=streams / many,
                     streams=streams, micro_batches=micro, model_digest=digest)


__all__ = ["layer_bytes", "plan_llm_layout", "plan_stage", "split_layers"]
