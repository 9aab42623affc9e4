"""Pipeline planning: a `ModelGraph` plus device and link profiles in, a `Plan` out.

Pure: no sockets, no processes, no onnxruntime. The exact search lives in
`partitioner.dp`; this module turns the graph and profiles into its arrays (compute
prefix sums from `partitioner.cost`, hop times from the link profiles, memory
limits) and the chosen segments into `Stage` records with their predictions.

Exits: every exit head's cut becomes a stage boundary. When it falls inside one
device's segment the device simply runs two consecutive stages (no transfer), so
exits constrain the stages, never the device assignment.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from partitioner.cost import DEFAULT_COST_MODEL, CostModel, DeviceLike, LinkLike, Links
from partitioner.dp import Problem, Segment, solve_latency, solve_throughput
from partitioner.errors import InfeasiblePlanError, PartitionError
from partitioner.graph import ExitHead, ModelGraph
from partitioner.memory import SegmentMemory
from partitioner.plan import ExitSpec, Plan, Stage

log = logging.getLogger(__name__)

MAX_DEVICES = 12  # the DP is exponential in the device count; beyond this refuse clearly
OBJECTIVES = ("latency", "throughput")

LinkInput = Iterable[LinkLike] | Mapping[tuple[str, str], LinkLike] | Links | None


def _budgets(
    devices: Sequence[DeviceLike], memory_budgets: Sequence[int | None] | Mapping[str, int] | None
) -> list[float]:
    budgets: list[float] = []
    for i, device in enumerate(devices):
        budget: int | None = None
        if isinstance(memory_budgets, Mapping):
            budget = memory_budgets.get(device.name)
        elif memory_budgets is not None:
            if len(memory_budgets) != len(devices):
                raise PartitionError(
                    f"memory_budgets has {len(memory_budgets)} entries for {len(devices)} devices; "
                    "give one per device (None for the device's available memory)"
                )
            budget = memory_budgets[i]
        budgets.append(float(budget if budget is not None else device.mem_available_bytes))
    return budgets


def stage_memory(graph: ModelGraph) -> tuple[np.ndarray, np.ndarray]:
    """(parameter-byte prefix sums, live activation bytes at each node).

    A stage [p, q) holds its parameters (each initializer or `Constant` weight counted
    at its first user) plus its peak live activations: the tensors crossing the cut
    before a node plus that node's outputs, maximised over its nodes.
    """
    params = np.concatenate([[0.0], np.cumsum([n.param_bytes for n in graph.nodes])])
    crossing = graph.crossing_bytes()
    live = crossing[:-1] + np.array([n.output_bytes for n in graph.nodes], dtype=np.float64)
    return params, live


def build_problem(
    graph: ModelGraph,
    devices: Sequence[DeviceLike],
    links: Links,
    budgets: Sequence[float],
    exit_positions: Sequence[int],
    cost_model: CostModel,
    end: int | None = None,
) -> Problem:
    """The DP's arrays for the first `end` nodes (all by default)."""
    n = len(graph.nodes) if end is None else end
    exit_count = np.zeros(n + 1)
    for position in exit_positions:
        if 0 < position < n:
            exit_count[position:] += 1
    so = cost_model.stage_overhead_s
    a_rows, b_rows, lo_rows = [], [], []
    params, live = stage_memory(graph)
    # each device's segment is charged as the agent will: the sum over its stages
    memory = SegmentMemory(params, live, exit_positions)
    for e, device in enumerate(devices):
        prefix = np.concatenate([[0.0], np.cumsum(cost_model.node_times(graph, device)[:n])])
        # segment [p, q) runs 1 + (#exit cuts strictly inside) stages
        inside_end = np.concatenate([[0.0], exit_count[:n]])  # exit cuts at positions < q
        a_rows.append(prefix + so * (inside_end + 1))
        b_rows.append(prefix + so * exit_count)
        lo_rows.append(memory.lowest_starts(budgets[e], n))
    crossing = graph.crossing_bytes()[: n + 1].copy()
    crossing[~graph.cuttable()[: n + 1]] = np.inf  # no shard can start at an untyped cut
    d_count = len(devices)
    hops = np.zeros((d_count, d_count, n + 1))
    for d in range(d_count):
        for e in range(d_count):
            if d != e:
                rtt, bandwidth = links.params(devices[d].name, devices[e].name)
                hops[d, e] = rtt / 2.0 + crossing / max(bandwidth, 1.0)
    return Problem(np.array(a_rows), np.array(b_rows), hops, np.array(lo_rows))


def resolve_exits(graph: ModelGraph, exits: Sequence[str | ExitSpec] | None) -> list[ExitHead]:
    """The graph's exit heads the plan honours: all by default, a named subset, or none."""
    if exits is None:
        return list(graph.exits)
    wanted = [e.name if isinstance(e, ExitSpec) else e for e in exits]
    known = {h.name: h for h in graph.exits}
    missing = [w for w in wanted if w not in known]
    if missing:
        raise PartitionError(
            f"exits {missing} are not exit heads of the model (known: {sorted(known)}); "
            "name outputs like 'exit1' or pass exit_outputs= to ModelGraph.from_onnx"
        )
    chosen = [known[w] for w in wanted]
    finals = [h for h in graph.exits if h.final and h.name not in wanted]
    return sorted([*chosen, *finals] if chosen else [], key=lambda h: h.position)


def plan_pipeline(
    graph: ModelGraph,
    devices: Sequence[DeviceLike],
    links: LinkInput = None,
    *,
    objective: str = "latency",
    memory_budgets: Sequence[int | None] | Mapping[str, int] | None = None,
    exits: Sequence[str | ExitSpec] | None = None,
    cost_model: CostModel = DEFAULT_COST_MODEL,
    end: int | None = None,
) -> Plan:
    """The optimal pipeline of `graph` over (a subset of, in any order) `devices`.

    objective "latency" minimises one request's compute + transfers; "throughput"
    minimises the bottleneck stage (compute or hop), breaking ties by latency.
    `memory_budgets`: per device (sequence) or by name (mapping); default each
    device's `mem_available_bytes`. `exits`: exit heads whose cut must end a stage
    (default all the graph found; () for none). `end`: plan only nodes [0, end) (a
    model truncated at an exit). Raises `InfeasiblePlanError` if nothing fits.
    """
    if objective not in OBJECTIVES:
        raise PartitionError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if not devices:
        raise PartitionError("no devices to plan on; give at least one DeviceProfile")
    if len(devices) > MAX_DEVICES:
        raise PartitionError(
            f"{len(devices)} devices: the exact planner handles at most {MAX_DEVICES}; "
            "pick the strongest devices first"
        )
    link_table = links if isinstance(links, Links) else Links(links or ())
    heads = resolve_exits(graph, exits)
    n = len(graph.nodes) if end is None else end
    heads = [h for h in heads if h.position <= n]
    budgets = _budgets(devices, memory_budgets)
    problem = build_problem(
        graph, devices, link_table, budgets, [h.position for h in heads], cost_model, end
    )
    if objective == "latency":
        value, segments = solve_latency(problem)
    else:
        value, segments = solve_throughput(problem)
    if not segments:
        raise _infeasible(graph, devices, budgets, n, [h.position for h in heads])
    log.info(
        "planned %s over %d device(s): %s = %.4g s", graph.name, len(devices), objective, value
    )
    return assemble_plan(graph, devices, link_table, segments, heads, objective, cost_model, n)


def plan_single(
    graph: ModelGraph,
    device: DeviceLike,
    *,
    memory_budget: int | None = None,
    exits: Sequence[str | ExitSpec] | None = None,
    cost_model: CostModel = DEFAULT_COST_MODEL,
) -> Plan:
    """The whole model on one device (stages still end at exit heads)."""
    return plan_pipeline(
        graph, [device], None, memory_budgets=[memory_budget], exits=exits, cost_model=cost_model
    )


def plan_cuts(
    graph: ModelGraph,
    devices: Sequence[DeviceLike],
    cuts: Sequence[int],
    links: LinkInput = None,
    *,
    exits: Sequence[str | ExitSpec] | None = None,
    cost_model: CostModel = DEFAULT_COST_MODEL,
    objective: str = "latency",
) -> Plan:
    """A plan with the given cut positions: segment i runs on `devices[i]` (no search).

    For tests, benchmarks and users who want a fixed split; predictions are filled in
    as for a planned pipeline. `cuts` are strictly increasing interior positions.
    """
    n = len(graph.nodes)
    bounds = [0, *cuts, n]
    if any(b >= c for b, c in itertools.pairwise(bounds)) or len(cuts) >= len(devices):
        raise PartitionError(
            f"cuts {list(cuts)} must be increasing positions inside 1..{n - 1}, "
            f"at most one fewer than the {len(devices)} devices"
        )
    ok = graph.cuttable()
    bad = [c for c in cuts if not ok[c]]
    if bad:
        raise PartitionError(
            f"cannot cut at {bad}: a tensor crossing there has no inferred shape; "
            "pick positions from graph.cut_points()"
        )
    link_table = links if isinstance(links, Links) else Links(links or ())
    segments = [(i, a, b) for i, (a, b) in enumerate(itertools.pairwise(bounds))]
    heads = resolve_exits(graph, exits)
    return assemble_plan(graph, devices, link_table, segments, heads, objective, cost_model, n)


def _infeasible(
    graph: ModelGraph,
    devices: Sequence[DeviceLike],
    budgets: Sequence[float],
    n: int,
    exit_positions: Sequence[int] = (),
) -> InfeasiblePlanError:
    params, live = stage_memory(graph)
    need = SegmentMemory(params, live, exit_positions).bytes(0, n) if n else 0
    largest_node = max(
        (n_.param_bytes + live[i] for i, n_ in enumerate(graph.nodes[:n])), default=0
    )
    names = ", ".join(f"{d.name}={b / 1e6:.1f} MB" for d, b in zip(devices, budgets, strict=True))
    return InfeasiblePlanError(
        f"{graph.name} needs about {need / 1e6:.1f} MB in all (its largest single node "
        f"{largest_node / 1e6:.1f} MB) but the devices offer {names}: add devices, raise the "
        "memory budgets, or use a smaller batch size"
    )


def assemble_plan(
    graph: ModelGraph,
    devices: Sequence[DeviceLike],
    links: Links,
    segments: Sequence[Segment],
    heads: Sequence[ExitHead],
    objective: str,
    cost_model: CostModel,
    end: int,
) -> Plan:
    """Turn DP segments into stages (split at exit cuts) with predictions."""
    params, live = stage_memory(graph)
    memory = SegmentMemory(params, live)
    crossing_bytes = graph.crossing_bytes()
    exit_at = {h.position: h for h in heads}
    pieces: list[tuple[int, int, int]] = []
    for device, start, stop in segments:
        cuts = [start, *sorted(p for p in exit_at if start < p < stop), stop]
        pieces.extend((device, a, b) for a, b in itertools.pairwise(cuts))
    times = {e: cost_model.node_times(graph, devices[e]) for e, _, _ in segments}
    model_outputs = set(graph.model_outputs)
    stages: list[Stage] = []
    for index, (device, start, stop) in enumerate(pieces):
        produced = graph.produced_between(start, stop)
        consumed = {x for node in graph.nodes[start:stop] for x in node.inputs}
        inputs = (
            tuple(t for t in graph.crossing(start) if t in consumed)
            if start
            else tuple(t for t in graph.model_inputs if t in consumed)
        )
        forward = graph.crossing(stop) if stop < end else ()
        outputs = tuple(o for o in graph.model_outputs if o in produced)
        shard_outputs = [
            o
            for node in graph.nodes[start:stop]
            for o in node.outputs
            if o in model_outputs or o in forward
        ]
        nxt = pieces[index + 1][0] if index + 1 < len(pieces) else None
        cross = float(crossing_bytes[stop]) if nxt is not None and nxt != device else 0.0
        transfer = (
            links.transfer_time(devices[device].name, devices[nxt].name, cross)
            if nxt is not None and nxt != device
            else 0.0
        )
        head = exit_at.get(stop)
        stages.append(
            Stage(
                index=index,
                device=devices[device].name,
                device_index=device,
                node_start=start,
                node_end=stop,
                inputs=inputs,
                forward=forward,
                outputs=outputs,
                exit=head.name if head is not None and head.output in produced else None,
                predicted_compute_s=float(times[device][start:stop].sum())
                + cost_model.stage_overhead_s,
                predicted_transfer_s=transfer,
                transfer_bytes=int(cross),
                memory_bytes=memory.stage_bytes(start, stop),
                flops=float(sum(n.flops for n in graph.nodes[start:stop])),
                input_specs=tuple(graph.spec(t) for t in inputs),
                output_specs=tuple(graph.spec(t) for t in dict.fromkeys(shard_outputs)),
            )
        )
    exits = tuple(
        ExitSpec(
            name=h.name,
            output=h.output,
            stage_index=next(s.index for s in stages if s.exit == h.name),
            flops_fraction=h.flops_fraction,
            final=h.final or h.position == end,
        )
        for h in heads
        if any(s.exit == h.name for s in stages)
    )
    latency = sum(s.predicted_compute_s + s.predicted_transfer_s for s in stages)
    per_device: dict[int, float] = {}
    for s in stages:
        per_device[s.device_index] = per_device.get(s.device_index, 0.0) + s.predicted_compute_s
    worst = max([*per_device.values(), *(s.predicted_transfer_s for s in stages)])
    used = {s.device_index for s in stages}
    return Plan(
        model_sha256=graph.sha256,
        model_name=graph.name,
        strategy="single" if len(used) == 1 else "pipeline",
        objective=objective,
        stages=tuple(stages),
        exits=exits,
        devices=tuple(d.name for d in devices),
        model_inputs=tuple(graph.spec(t) for t in graph.model_inputs),
        model_outputs=tuple(graph.spec(t) for t in graph.model_outputs),
        batch_size=graph.batch_size,
        predicted_latency_s=latency,
        predicted_throughput_rps=1.0 / worst if worst > 0 else 0.0,
        extra={
            "graph_exit_outputs": list(graph.exit_outputs),
            **({"node_count": end} if end != len(graph.nodes) else {}),
        },
    )
