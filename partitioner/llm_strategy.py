"""Choosing how to split an LLM: single device, tensor, pipeline or hybrid, by prediction.

Why predict rather than rule: tensor parallelism pays two allreduces per layer, which
on a few-millisecond Wi-Fi link costs more than the compute it splits; a pipeline pays
one hop per stage but leaves all stages but one idle for a single stream; a hybrid puts
tensor groups on fast links inside pipeline stages. Which wins depends on the measured
devices, links and memory, so every strategy's best layout is predicted with the one
cost model (`partitioner.llm_cost` over `transports.cost`) and the best for the
objective is chosen: "latency" (ms/token of one stream) or "throughput" (tokens/s of
`streams` concurrent streams). The layout keeps every strategy's prediction and the
reason, so `edge-runtime plan --llm` can print them and a deployment can show them.

Candidates (pure, a few hundred layouts for 8 devices): the fastest k devices for every
k (a slow device may be better left out); single = each device alone; tensor = the k
in one group; pipeline = one stage each, in link order; hybrid = every split of the k,
in link order (devices with fast links between them adjacent), into contiguous groups.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

from partitioner.errors import InfeasiblePlanError, PartitionError
from partitioner.llm_cost import (
    DEFAULT_LLM_COST,
    LinkTable,
    LlmCostModel,
    decode_rate,
    host_decode_rate,
    step_time,
)
from partitioner.llm_layout import OBJECTIVES, STRATEGIES, LlmLayout, StrategyPrediction
from partitioner.llm_pipeline import StageQuantizer, plan_llm_layout
from partitioner.tensor import DeviceLike
from partitioner.tensor_plan import DecoderShape

# Layouts predicted within this fraction of the best count as equal; the simpler
# strategy (earlier in STRATEGIES) is then chosen.
TIE_FRACTION = 0.02


def link_order(devices: Sequence[DeviceLike], links: LinkTable) -> list[int]:
    """Devices in a chain that keeps fast links adjacent: from the fastest device, each
    next the one nearest (lowest latency) to the last; ties by bandwidth."""
    n = len(devices)
    left = set(range(n))
    current = max(left, key=lambda i: (devices[i].mem_bandwidth_gbps, -i))
    order = [current]
    left.discard(current)
    while left:
        current = min(left, key=lambda j: (links.latency_s[current][j],
                                           -devices[j].mem_bandwidth_gbps, j))
        order.append(current)
        left.discard(current)
    return order


def _compositions(items: Sequence[int]) -> Iterator[list[list[int]]]:
    """Every split of `items` into contiguous non-empty groups, in order."""
    n = len(items)
    for cuts in itertools.product((False, True), repeat=n - 1):
        groups, current = [], [items[0]]
        for item, cut in zip(items[1:], cuts, strict=True):
            if cut:
                groups.append(current)
                current = []
            current.append(item)
        groups.append(current)
        yield groups


def candidates(strategy: str, devices: Sequence[DeviceLike], links: LinkTable,
               layers: int) -> Iterator[list[list[int]]]:
    """The groupings (device indices per stage) a strategy may use."""
    order = link_order(devices, links)
    by_speed = sorted(range(len(devices)), key=lambda i: (-devices[i].mem_bandwidth_gbps, i))
    for k in range(1, len(devices) + 1):
        chosen = set(by_speed[:k])
        subset = [i for i in order if i in chosen]
        if strategy == "single" and k == 1:
            yield from ([[i]] for i in range(len(devices)))
        elif strategy == "tensor" and k >= 2:
            yield [subset]
        elif strategy == "pipeline" and 2 <= k <= layers:
            yield [[i] for i in subset]
        elif strategy == "hybrid" and k >= 3:
            for groups in _compositions(subset):
                if 1 < len(groups) <= layers and any(len(g) > 1 for g in groups):
                    yield groups


def _value(layout: LlmLayout, objective: str) -> float:
    return (layout.predicted_s_per_token if objective == "latency"
            else 1.0 / max(layout.predicted_tokens_per_s, 1e-30))


def _prediction(strategy: str, layout: LlmLayout | None, streams: int,
                why: str) -> StrategyPrediction:
    if layout is None:
        return StrategyPrediction(strategy, False, 0.0, 0.0, streams, why=why)
    return StrategyPrediction(
        strategy, True, layout.predicted_s_per_token, layout.predicted_tokens_per_s, streams,
        layout.groups, tuple(s.layers for s in layout.stages), why)


def best_layouts(shape: DecoderShape, devices: Sequence[DeviceLike], *,
                 strategies: Sequence[str] = STRATEGIES,
                 memory_budgets: Sequence[int | None] | None = None,
                 links: LinkTable | None = None, objective: str = "latency", streams: int = 4,
                 model: LlmCostModel = DEFAULT_LLM_COST, model_digest: str = "",
                 quantize: StageQuantizer | None = None,
                 ) -> tuple[dict[str, LlmLayout], dict[str, str]]:
    """Each strategy's best layout for the objective, and why the others cannot run
    (`quantize`: every stage's shares quantized before it is judged, as
    `plan_llm_layout` takes it)."""
    if objective not in OBJECTIVES:
        raise PartitionError(f"objective {objective!r} is not one of {OBJECTIVES}")
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not devices:
        raise PartitionError(f"strategies {unknown} are not among {STRATEGIES}"
                             if unknown else "no devices to plan for")
    table = links or LinkTable.uniform(len(devices), 0.002, 12.5e6)
    best: dict[str, LlmLayout] = {}
    why: dict[str, str] = {}
    for strategy in strategies:
        tried = 0
        for groups in candidates(strategy, devices, table, shape.layers):
            tried += 1
            try:
                layout = plan_llm_layout(shape, devices, groups, memory_budgets=memory_budgets,
                                         links=table, streams=streams, model=model,
                                         model_digest=model_digest, quantize=quantize)
            except InfeasiblePlanError as error:
                why.setdefault(strategy, str(error))
                continue
            held = best.get(strategy)
            if held is None or (_value(layout, objective), len(layout.devices)) < (
                    _value(held, objective), len(held.devices)):
                best[strategy] = layout
        if strategy not in best and strategy not in why:
            why[strategy] = (f"needs more devices ({len(devices)} given)" if not tried
                             else "no layout fits")
    return best, why


def plan_llm_strategy(shape: DecoderShape, devices: Sequence[DeviceLike],
                      strategy: str = "auto", *,
                      memory_budgets: Sequence[int | None] | None = None,
                      links: LinkTable | None = None, objective: str = "latency",
                      streams: int = 4, model: LlmCostModel = DEFAULT_LLM_COST,
                      model_digest: str = "",
                      quantize: StageQuantizer | None = None) -> LlmLayout:
    """The layout of `strategy` ("auto": the best of all) with every strategy's
    prediction and the reason recorded, each judged with its stages quantized when
    `quantize` is given. `InfeasiblePlanError` when nothing fits."""
    if strategy != "auto" and strategy not in STRATEGIES:
        raise PartitionError(f"strategy {strategy!r} is not 'auto' or one of {STRATEGIES}")
    best, why = best_layouts(shape, devices, memory_budgets=memory_budgets, links=links,
                             objective=objective, streams=streams, model=model,
                             model_digest=model_digest, quantize=quantize)
    predictions = tuple(_prediction(s, best.get(s), streams, why.get(s, ""))
                        for s in STRATEGIES)
    pool = list(best) if strategy == "auto" else [s for s in best if s == strategy]
    if not pool:
        raise InfeasiblePlanError(
            f"no {'' if strategy == 'auto' else strategy + ' '}layout fits these devices: "
            + "; ".join(f"{s}: {w}" for s, w in why.items()))
    top = min(_value(best[s], objective) for s in pool)
    chosen = next(s for s in STRATEGIES if s in pool
                  and _value(best[s], objective) <= top * (1 + TIE_FRACTION))
    layout = best[chosen]
    reason = _reason(chosen, best, objective, strategy == "auto")
    return LlmLayout(shape=layout.shape, strategy=layout.strategy, stages=layout.stages,
                     predicted_s_per_token=layout.predicted_s_per_token,
                     predicted_tokens_per_s=layout.predicted_tokens_per_s,
                     streams=layout.streams, micro_batches=layout.micro_batches,
                     objective=objective, predictions=predictions, reason=reason,
                     model_digest=layout.model_digest, notes=layout.notes)


def _reason(chosen: str, best: dict[str, LlmLayout], objective: str, auto: bool) -> str:
    """Why `chosen`: its figure against the runner-up's, and where its time goes."""
    def figure(layout: LlmLayout) -> str:
        return (f"{layout.predicted_s_per_token * 1e3:.2f} ms/token" if objective == "latency"
                else f"{layout.predicted_tokens_per_s:.1f} tokens/s at {layout.streams} streams")

    layout = best[chosen]
    stages = sum(st.compute_s for st in layout.stages)  # weights, collectives, overheads
    rest = max(0.0, layout.predicted_s_per_token - stages)
    where = (f"per token {stages * 1e3:.2f} ms in {len(layout.stages)} stage(s) (weights, "
             f"collectives) and {rest * 1e3:.2f} ms of hops and the coordinator")
    if not auto:
        return f"{chosen} as asked: {figure(layout)}; {where}"
    others = sorted((s for s in best if s != chosen), key=lambda s: _value(best[s], objective))
    if not others:
        return f"{chosen} is the only strategy that fits: {figure(layout)}; {where}"
    second = others[0]
    return (f"best {objective}: {chosen} {figure(layout)} vs {second} "
            f"{figure(best[second])}; {where}")


def prefill_time(layout: LlmLayout, devices: Sequence[DeviceLike], links: LinkTable,
                 prompt_tokens: int, model: LlmCostModel = DEFAULT_LLM_COST) -> float:
    """Predicted time to first token of one `prompt_tokens`-token prompt: one step of
    its tokens (one logits row) cut into one chunk per stage, as the runner pipelines a
    prefill. `devices` (and `links`, by index) are the ones the layout was planned over;
    its stages name them."""
    index = {d.name: i for i, d in enumerate(devices)}
    unknown = [n for n in layout.devices if n not in index]
    if unknown:
        raise PartitionError(f"the layout names {unknown}, not among the devices given")
    members = [[index[n] for n in stage.devices] for stage in layout.stages]
    return step_time([stage.plan for stage in layout.stages], members,
                     [float(d.gflops_fp32) for d in devices], links, max(1, prompt_tokens),
                     len(layout.stages), rows=1, model=model,
                     rates=[decode_rate(d, model) for d in devices],
                     host_rates=[host_decode_rate(d, model) for d in devices])


__all__ = ["TIE_FRACTION", "best_layouts", "candidates", "link_order", "plan_llm_strategy",
           "prefill_time"]
