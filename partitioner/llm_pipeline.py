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

Quantized weights (`quantize`, a `StageQuantizer`): the rule that turns a tensor plan's
fp32 shares into quantized ones (bytes, time per token, peak memory, streaming) is the
caller's — the SDK's 4-bit rule, the one its tensor-parallel plans use — and is applied
to each stage's plan while it still has the stage's own shape, so a stage is charged
for its layers' weights and KV cache only and the LM head only on the last stage. As
for a tensor plan, the split is by speed on the fp32 shape, uncapped by the budgets
(the element size does not change bandwidth ratios); the quantizer takes the budgets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
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

#: (a stage's tensor plan over its own shape, its devices, their budgets) -> the plan
#: with quantized shares (e.g. the SDK's `llm_q4.quantize_plan`).
StageQuantizer = Callable[[TensorPlan, Sequence[DeviceLike], Sequence[int | None]], TensorPlan]


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
               model_digest: str, quantize: StageQuantizer | None = None) -> TensorPlan:
    """The tensor plan of one stage: its group over the layers [start, end) (with
    `quantize`: planned uncapped, then quantized under the budgets)."""
    plan = plan_tensor_parallel(_stage_shape(shape, layers), devices,
                                memory_budgets=None if quantize else list(budgets),
                                links=rtts or None, streaming=True, model_digest=model_digest)
    if quantize is not None:
        plan = quantize(plan, devices, list(budgets))
    shares = tuple(replace(s, layers=layers) for s in plan.shares)
    return replace(plan, shape=shape, shares=shares)


def _stage_shape(shape: DecoderShape, layers: tuple[int, int]) -> DecoderShape:
    """The model's shape as one stage sees it: its own layers, and the vocabulary only if
    it is the last stage (which holds the final norm and LM head)."""
    first, end = layers
    return replace(shape, layers=end - first, vocab=shape.vocab if end == shape.layers else 0)


def quantize_stage(plan: TensorPlan, devices: Sequence[DeviceLike],
                   budgets: Sequence[int | None], quantize: StageQuantizer) -> TensorPlan:
    """A planned stage (shares over a layer range, the model's shape) with the same split
    quantized: the quantizer sees the stage's own shape, as in `plan_stage`."""
    layers = plan.shares[0].layer_range(plan.shape.layers)
    own = replace(plan, shape=_stage_shape(plan.shape, layers),
                  shares=tuple(replace(s, layers=None) for s in plan.shares))
    out = quantize(own, devices, list(budgets))
    return replace(out, shape=plan.shape,
                   shares=tuple(replace(s, layers=layers) for s in out.shares))


def plan_llm_layout(shape: DecoderShape, devices: Sequence[DeviceLike],
                    groups: Sequence[Sequence[int]], *,
                    memory_budgets: Sequence[int | None] | None = None,
                    links: LinkTable | None = None, streams: int = 1,
                    model: LlmCostModel = DEFAULT_LLM_COST, model_digest: str = "",
                    quantize: StageQuantizer | None = None) -> LlmLayout:
    """A layout of stages, `groups[k]` the device indices of stage k, in order
    (`quantize`: each stage's shares quantized, see the module docstring).

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
    top = max(rates) or 1.0  # relative speeds, rounded: equal stages tie exactly
    speeds = [round(sum(rates[i] for i in g) / top, 9) for g in groups]
    caps = None if quantize else [_capacity(shape, [budgets[i] for i in g]) for g in groups]
    ranges = split_layers(shape, speeds, caps)
    digest = model_digest or shape.digest()
    plans = [replace(plan_stage(shape, r, [devices[i] for i in g], [budgets[i] for i in g],
                                table.rtts(g) if len(g) > 1 else None, digest, quantize),
                     allreduce=stage_schedule(shape, g, table, model))
             for r, g in zip(ranges, groups, strict=True)]
    return _priced(shape, plans, ranges, [list(g) for g in groups], devices, table, streams,
                   model, digest)


def _priced(shape: DecoderShape, plans: Sequence[TensorPlan], ranges: Sequence[tuple[int, int]],
            members: list[list[int]], devices: Sequence[DeviceLike], table: LinkTable,
            streams: int, model: LlmCostModel, digest: str,
            micro_batches: int | None = None) -> LlmLayout:
    """The layout of these stage plans with its predicted times (`micro_batches`: the
    count a step is cut into; None: the fastest for `streams`)."""
    rates = [decode_rate(d, model) for d in devices]
    host_rates = [host_decode_rate(d, model) for d in devices]
    gflops = [float(d.gflops_fp32) for d in devices]
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
    counts = (range(1, max(1, min(streams, len(plans))) + 1) if micro_batches is None
              else [micro_batches])
    many, micro = min((step_time(plans, members, gflops, table, streams, m, model=model,
                                 rates=rates, host_rates=host_rates), m) for m in counts)
    strategy = strategy_of([len(m) for m in members])
    return LlmLayout(shape=shape, strategy=strategy, stages=tuple(stages),
                     predicted_s_per_token=s_token, predicted_tokens_per_s=streams / many,
                     streams=streams, micro_batches=micro, model_digest=digest)


def quantize_layout(layout: LlmLayout, devices: Sequence[DeviceLike], quantize: StageQuantizer,
                    *, memory_budgets: Sequence[int | None] | None = None,
                    links: LinkTable | None = None,
                    model: LlmCostModel = DEFAULT_LLM_COST) -> LlmLayout:
    """`layout` as planned (groups, layer ranges, each stage's split, micro-batches) with
    quantized shares (`quantize_stage`) and the times they predict. `devices` (named as
    the layout names them), `memory_budgets` and `links` by the same index. The choice's
    record is kept; its prediction for this strategy becomes the quantized one (the
    other strategies' stay as they were made)."""
    index = {d.name: i for i, d in enumerate(devices)}
    missing = [n for n in layout.devices if n not in index]
    if missing:
        raise PartitionError(f"the layout names {missing}, not among the devices given")
    groups = [[index[n] for n in g] for g in layout.groups]
    budgets = list(memory_budgets) if memory_budgets is not None else [None] * len(devices)
    plans = [quantize_stage(s.plan, [devices[i] for i in g], [budgets[i] for i in g], quantize)
             for s, g in zip(layout.stages, groups, strict=True)]
    table = links or LinkTable.uniform(len(devices), DEFAULT_RTT_S, DEFAULT_BANDWIDTH,
                                       coordinator=False)
    out = _priced(layout.shape, plans, [s.layers for s in layout.stages], groups, devices,
                  table, layout.streams, model, layout.model_digest or layout.shape.digest(),
                  layout.micro_batches)
    predictions = tuple(
        replace(p, s_per_token=out.predicted_s_per_token,
                tokens_per_s=out.predicted_tokens_per_s)
        if p.strategy == layout.strategy and p.groups == layout.groups else p
        for p in layout.predictions)
    return replace(out, objective=layout.objective, predictions=predictions,
                   reason=layout.reason, notes=layout.notes)


__all__ = ["StageQuantizer", "layer_bytes", "plan_llm_layout", "plan_stage", "quantize_layout",
           "quantize_stage", "split_layers"]
