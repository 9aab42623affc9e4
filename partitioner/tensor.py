"""Tensor-parallel split of a decoder-only LLM across heterogeneous devices.

Why this shape of split: decode runs one token at a time, so every layer's weights
are streamed from memory once per token and the time is set by memory bandwidth,
not FLOPs. Each device's share of the weights is therefore proportional to its
measured `mem_bandwidth_gbps`: attention by whole KV-head groups (the query heads of a
group follow it, so no KV is exchanged), the MLP by column blocks of the intermediate
dimension, the LM head by vocabulary rows (logits gathered to the hub). Attention is
coarse (a few KV heads), so the MLP columns are assigned *after* it to bring each
device's total bytes per layer to its target: a device that got no head (more devices
than KV heads) does MLP work only.

Memory: with `streaming=False` each share stays resident, so the budgets cap the
shares (water-filling: a capped device keeps its cap, the rest is re-split by
bandwidth among the others). With `streaming=True` a device streams its layers from
disk through a sliding window: the budget caps the *window*, not the share, which
stays proportional to bandwidth; the plan then records the window bytes
(budget − KV cache − activations) and the token time includes the disk read time.

Mixture of experts (`shape.experts`): attention, the replicated router and the LM head
are split as above, then whole experts are placed by `partitioner.experts` — by
expected time per token (a token reads only k of E experts) under each device's memory
budget — and a share's `mlp_columns` are its experts' columns. Its predicted time is the
expected one: attention, router and head, plus k/E of its experts' bytes.

Pure: imports only the standard library, `partitioner.experts` and
`partitioner.cost.Links`; device profiles are read through the structural `DeviceLike`
protocol (`devices.DeviceProfile` satisfies it; an optional `disk_read_gbps` is used
for streaming plans). The plan records it returns (`DecoderShape`, `TensorShare`,
`TensorPlan`) live in `partitioner.tensor_plan` and are re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Protocol

from partitioner.cost import Links
from partitioner.errors import InfeasiblePlanError, PartitionError
from partitioner.experts import expert_ranges, expert_room, place_experts
from partitioner.tensor_plan import PLAN_VERSION as PLAN_VERSION
from partitioner.tensor_plan import DecoderShape, TensorPlan, TensorShare

# Bytes kept aside on each device for activations, logits and interpreter overhead.
ACTIVATION_RESERVE_BYTES = 32 * 1024 * 1024


class DeviceLike(Protocol):
    """The fields of `devices.DeviceProfile` the tensor planner reads."""

    @property
    def name(self) -> str: ...
    @property
    def mem_bandwidth_gbps(self) -> float: ...
    @property
    def gflops_fp32(self) -> float: ...


def apportion(total: int, weights: Sequence[float], unit: int = 1) -> list[int]:
    """Split `total` into integer parts proportional to `weights` (largest remainder).

    Parts are multiples of `unit` except that the remainder of `total % unit` goes to
    the part with the largest weight. Zero weights get zero.
    """
    if total < 0 or any(w < 0 for w in weights) or not weights:
        raise PartitionError(f"cannot apportion {total} over weights {list(weights)}")
    s = sum(weights)
    if s <= 0:
        raise PartitionError("every device has zero weight; check the device profiles")
    units, rest = divmod(total, unit)
    exact = [units * w / s for w in weights]
    parts = [math.floor(x) for x in exact]
    order = sorted(
        range(len(weights)), key=lambda i: (exact[i] - parts[i], weights[i]), reverse=True
    )
    for i in order[: units - sum(parts)]:
        parts[i] += 1
    out = [p * unit for p in parts]
    out[max(range(len(weights)), key=lambda i: weights[i])] += rest
    return out


def _ranges(sizes: Sequence[int]) -> list[tuple[int, int]]:
    out, start = [], 0
    for n in sizes:
        out.append((start, start + n))
        start += n
    return out


def _water_fill(weights: Sequence[float], caps: Sequence[float], total: float) -> list[float]:
    """Fractions proportional to weights, no device above its cap (in the same units as total)."""
    n = len(weights)
    alloc = [0.0] * n
    free = set(range(n))
    remaining = total
    while free:
        s = sum(weights[i] for i in free)
        over = [i for i in free if remaining * weights[i] / s > caps[i]]
        if not over:
            for i in free:
                alloc[i] = remaining * weights[i] / s
            break
        for i in over:
            alloc[i] = caps[i]
            remaining -= caps[i]
            free.discard(i)
    return [a / total for a in alloc]


def plan_tensor_parallel(
    shape: DecoderShape,
    devices: Sequence[DeviceLike],
    *,
    memory_budgets: Sequence[int | None] | None = None,
    links: Links | Mapping[tuple[int, int], float] | None = None,
    hub: int | None = None,
    streaming: bool = False,
    model_digest: str = "",
) -> TensorPlan:
    """Split `shape` over `devices` by measured memory bandwidth; see the module docstring.

    `memory_budgets[i]` (bytes, None = unlimited) caps device i; `links` gives round-trip
    latencies: a `partitioner.cost.Links` (by device name) or `{(i, j): seconds}`. The hub
    is the explicit `hub`, else the device with the lowest summed latency to the others,
    else the fastest device.
    """
    n = len(devices)
    if n == 0:
        raise PartitionError("no devices to plan for")
    bw = [float(d.mem_bandwidth_gbps) for d in devices]
    if any(b <= 0 for b in bw):
        raise PartitionError("every device needs a positive mem_bandwidth_gbps; re-profile it")
    budgets = list(memory_budgets) if memory_budgets is not None else [None] * n
    if len(budgets) != n:
        raise PartitionError(f"{len(budgets)} memory budgets for {n} devices")
    e = shape.bytes_per_element
    moe = shape.experts > 0
    # what the water-fill splits: everything, or for a mixture of experts all but experts
    total_bytes = _share_bytes(shape, shape.kv_heads, 0 if moe else shape.intermediate,
                               shape.vocab)
    fixed = ACTIVATION_RESERVE_BYTES + 2 * shape.layers * shape.hidden * 4
    notes: list[str] = []

    bw_weights = [b / sum(bw) for b in bw]
    capped = not streaming and any(b is not None for b in budgets)
    caps = [math.inf if b is None else max(0.0, float(b - fixed)) for b in budgets]
    if capped:
        notes.append("shares capped by memory budgets (all weights resident)")
    # Water-fill by bandwidth under the caps, split into whole heads / column blocks, and
    # tighten the caps of devices that rounding or their KV cache pushed over budget.
    for _ in range(12):
        if capped and sum(min(c, total_bytes) for c in caps) < total_bytes:
            held = sum(c for c in caps if c != math.inf)
            raise InfeasiblePlanError(
                f"the devices' memory budgets hold {held / 1e6:.0f} MB of weights but the "
                f"model needs {total_bytes / 1e6:.0f} MB: raise --memory-budget, "
                "add devices, or plan with streaming=True (sliding window)"
            )
        weights = _water_fill(bw_weights, caps, float(total_bytes)) if capped else bw_weights
        kv, cols, rows = _split(shape, weights)
        if not capped:
            break
        over = [
            _share_bytes(shape, kv[i], cols[i], rows[i]) + shape.kv_cache_bytes(kv[i]) + fixed - b
            if b is not None
            else 0
            for i, b in enumerate(budgets)
        ]
        if max(over) <= 0:
            break
        for i, o in enumerate(over):
            if o > 0:
                caps[i] = max(0.0, caps[i] - o - 0.002 * total_bytes)

    if isinstance(links, Links):
        table = links
        links = {
            (i, j): table.params(devices[i].name, devices[j].name)[0]
            for i in range(n)
            for j in range(n)
            if i != j
        }
    hub_index = _choose_hub(n, bw, links, hub)
    n_experts = [0] * n
    if moe:
        n_experts = _place_experts(shape, devices, kv, rows, budgets, fixed, capped, notes)
        cols = [k * shape.expert_intermediate for k in n_experts]
    kv_r, col_r, row_r = _ranges(kv), _ranges(cols), _ranges(rows)
    experts_r = expert_ranges(n_experts)
    act_bytes = shape.hidden * 4
    shares = []
    for i, dev in enumerate(devices):
        wbytes = _share_bytes(shape, kv[i], cols[i], rows[i])
        # star allreduce twice per layer: a spoke sends and receives one hidden vector,
        # the hub receives and sends n-1 of them; plus the logits gather to the hub.
        allreduce = (
            2 * shape.layers * 2 * act_bytes * (n - 1 if i == hub_index else 1) if n > 1 else 0
        )
        gather = (shape.vocab - rows[i]) * 4 if i == hub_index else (rows[i] * 4 if n > 1 else 0)
        kv_cache = shape.kv_cache_bytes(kv[i])
        active = _active_bytes(shape, wbytes, cols[i])  # read per decoded token (expected)
        flops = 2.0 * active / e
        compute = max(active / (bw[i] * 1e9), flops / max(1e-9, float(dev.gflops_fp32) * 1e9))
        budget = budgets[i]
        window = 0
        is_streaming = False
        peak = wbytes + kv_cache + fixed
        if streaming and budget is not None and peak > budget:
            window = budget - kv_cache - fixed
            # the LM head streams in row chunks no larger than a layer block
            largest = max(
                kv[i] * shape.kv_group_bytes() + 2 * shape.hidden * 4,
                cols[i] * shape.mlp_column_bytes() + shape.router_bytes() + shape.hidden * 4,
                min(1, rows[i]) * shape.hidden * e + shape.hidden * 4,
            )
            if window < largest:
                raise InfeasiblePlanError(
                    f"device {i} ({dev.name}): a memory budget of {budget / 1e6:.1f} MB leaves "
                    f"{window / 1e6:.1f} MB for weights after the KV cache, less than its largest "
                    f"block ({largest / 1e6:.1f} MB): raise --memory-budget or lower max_context"
                )
            is_streaming = True
            peak = budget
            disk = getattr(dev, "disk_read_gbps", None)
            if isinstance(disk, int | float) and disk > 0:
                compute = max(compute, (wbytes - window) / (disk * 1e9))
        elif budget is not None and peak > budget:
            raise InfeasiblePlanError(
                f"device {i} ({dev.name}): its share needs {peak / 1e6:.1f} MB but the budget is "
                f"{budget / 1e6:.1f} MB: raise --memory-budget or plan with streaming=True"
            )
        shares.append(
            TensorShare(
                device=dev.name,
                kv_heads=kv_r[i],
                mlp_columns=col_r[i],
                vocab_rows=row_r[i],
                weight_bytes=wbytes,
                compute_s_per_token=compute,
                wire_bytes_per_token=allreduce + gather,
                peak_memory_bytes=peak,
                streaming=is_streaming,
                window_bytes=window,
                experts=experts_r[i] if moe else (0, 0),
            )
        )
    predicted = max(s.compute_s_per_token for s in shares)
    return TensorPlan(
        shape=shape,
        shares=tuple(shares),
        hub=hub_index,
        predicted_s_per_token=predicted,
        model_digest=model_digest or shape.digest(),
        notes=tuple(notes),
    )


def _split(shape: DecoderShape, weights: Sequence[float]) -> tuple[list[int], list[int], list[int]]:
    """Whole KV groups by weight, then MLP columns topping each device up to its byte
    target (none for a mixture of experts: `_place_experts` places whole experts)."""
    n = len(weights)
    kv = apportion(shape.kv_heads, weights)
    # Column and row blocks keep BLAS tiles whole on real models; tiny models split finely.
    vunit = 64 if shape.vocab // 64 >= 8 * n else 1
    rows = apportion(shape.vocab, weights, vunit)
    if shape.experts:
        return kv, [0] * n, rows
    attn_bytes = [k * shape.kv_group_bytes() for k in kv]
    per_layer = (
        shape.kv_heads * shape.kv_group_bytes() + shape.intermediate * shape.mlp_column_bytes()
    )
    mlp_target = [max(0.0, w * per_layer - a) for w, a in zip(weights, attn_bytes, strict=True)]
    unit = 32 if shape.intermediate // 32 >= 8 * n and shape.intermediate % 32 == 0 else 1
    cols = apportion(shape.intermediate, mlp_target if sum(mlp_target) > 0 else weights, unit)
    return kv, cols, rows


def _share_bytes(shape: DecoderShape, kv: int, cols: int, rows: int) -> int:
    layer = kv * shape.kv_group_bytes() + cols * shape.mlp_column_bytes() + shape.router_bytes()
    return shape.layers * layer + rows * shape.hidden * shape.bytes_per_element


def _active_bytes(shape: DecoderShape, wbytes: int, cols: int) -> float:
    """Bytes a share reads per decoded token: all of them, but only k/E of its experts."""
    if not shape.experts:
        return float(wbytes)
    experts = shape.layers * cols * shape.mlp_column_bytes()
    return wbytes - experts + experts * shape.experts_per_token / shape.experts


def _place_experts(shape: DecoderShape, devices: Sequence[DeviceLike], kv: Sequence[int],
                   rows: Sequence[int], budgets: Sequence[int | None], fixed: int,
                   capped: bool, notes: list[str]) -> list[int]:
    """Experts per device (`partitioner.experts.place_experts`): by expected time per
    token, within each budget's room after the rest of the share; past that room only
    when streaming (those devices then read their experts through the window)."""
    e = shape.bytes_per_element
    # bytes per second each device reads at: bandwidth, or FLOPs if those bind first
    rates = [min(float(d.mem_bandwidth_gbps), float(d.gflops_fp32) * e / 2) * 1e9
             for d in devices]
    per_expert = shape.layers * shape.expert_intermediate * shape.mlp_column_bytes()
    active = per_expert * shape.experts_per_token / shape.experts
    base = [_share_bytes(shape, k, 0, r) for k, r in zip(kv, rows, strict=True)]
    room: list[int | None] = [
        None if b is None
        else expert_room(b - base[i] - shape.kv_cache_bytes(kv[i]) - fixed, per_expert)
        for i, b in enumerate(budgets)]
    counts = place_experts(shape.experts, [b / r for b, r in zip(base, rates, strict=True)],
                           [active / r for r in rates], room, overflow=not capped)
    if any(c is not None and n > c for n, c in zip(counts, room, strict=True)):
        notes.append("experts beyond the memory budgets: those devices stream them")
    notes.append(f"experts per device {counts}: {shape.experts_per_token} of "
                 f"{shape.experts} run per token, times are expected")
    return counts


def _choose_hub(
    n: int, bw: Sequence[float], links: Mapping[tuple[int, int], float] | None, hub: int | None
) -> int:
    if hub is not None:
        if not 0 <= hub < n:
            raise PartitionError(f"hub {hub} is not a device index (0..{n - 1})")
        return hub
    if links:

        def summed(i: int) -> float:
            return sum(links.get((i, j), links.get((j, i), 0.0)) for j in range(n) if j != i)

        return min(range(n), key=lambda i: (summed(i), -bw[i]))
    return max(range(n), key=lambda i: (bw[i], -i))


__all__ = [
    "DecoderShape",
    "DeviceLike",
    "TensorPlan",
    "TensorShare",
    "apportion",
    "plan_tensor_parallel",
]
