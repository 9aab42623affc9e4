"""Predicted decode time of an LLM layout: compute per share, α-β time per collective
and per activation hop (`transports.cost`, the one model of communication).

One forward step of b tokens through a layout of stages (each a tensor-parallel group
over a layer range), cut into m micro-batches of b/m tokens::

    stage_k(t)  = max over members of max(weight bytes / decode rate, flops · t / rate)
                  (+ disk reads of a streaming share) + per-layer and per-step overheads
                  + 2 allreduces per layer of t hidden vectors (groups of 2 or more), by
                    the algorithm the stage's plan chose for that size (`TensorPlan.allreduce`)
                  + the logits gather to the group's hub (last stage)
    hop_k(t)    = the hub's t hidden vectors to each member of stage k+1
    step(b, m)  = Σ_k stage_k(b/m) + Σ_k hop_k(b/m)            (the first micro-batch)
                  + (m − 1) · max_k (stage_k(b/m) + hop_k(b/m))  (the others, pipelined)
                  + the coordinator's request in and the logits out

Per-token latency is step(1, 1) (one stream decodes one token per step); tokens/s at S
concurrent streams is S / step(S, min(S, stages)). Decode reads every weight once per
step whatever b is, so batching pays until the flops term takes over.

Agents on one machine (a local cluster; `LinkTable.hosts`): a tensor group with more
members there than the machine has cores is slowed by that ratio, and each of its
collectives waits about one scheduler slice for a descheduled member; together they
read no faster than the machine's `host_decode_gbps` (all its cores streaming at once).

The decode rate is what the engine streams, not what the memory can deliver: the
profile's `decode_gbps` (a numpy `x @ W` probe timed when the device is profiled;
where unmeasured, `mem_bandwidth_gbps` × `bare_read_fraction`) × `engine_efficiency`,
the fraction of it a whole decode step keeps (both measured on the 2-core dev box).

The overheads are this Python runtime's fixed costs (`LlmCostModel`; checked with
`edge-runtime bench llm --strategies`, docs/llm-cluster.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from partitioner.cost import Links
from partitioner.tensor import DeviceLike
from partitioner.tensor_plan import DecoderShape, TensorPlan, TensorShare
from transports.cost import allreduce_schedule, allreduce_time, gather_time, hop_time, pick

#: Unmeasured links: a home Wi-Fi / 100 Mbit LAN, as the ONNX planner assumes.
DEFAULT_RTT_S = 0.002
DEFAULT_BANDWIDTH = 12.5e6

#: Links by name: (round trip s, bytes/s). "wifi" is `transports.LinkSpec.wifi()`'s.
NAMED_LINKS: dict[str, tuple[float, float]] = {
    "loopback": (100e-6, 2e9),
    "ethernet": (0.0003, 117e6),  # gigabit, switched
    "gigabit": (0.0003, 117e6),
    "wifi": (0.005, 50e6 / 8),
}


def parse_link(spec: str) -> tuple[float, float]:
    """A named link or RTT_MS:MBIT (e.g. 5:50 = 5 ms round trip, 50 Mbit/s) as
    (round trip s, bytes/s); ValueError naming the forms otherwise."""
    if spec in NAMED_LINKS:
        return NAMED_LINKS[spec]
    parts = spec.split(":")
    try:
        rtt_ms, mbit = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"link {spec!r}: use {', '.join(NAMED_LINKS)} or RTT_MS:MBIT "
                         "(e.g. 5:50)") from None
    if rtt_ms < 0 or mbit <= 0:
        raise ValueError(f"link {spec!r}: the round trip must be ≥ 0 and the rate > 0")
    return rtt_ms / 1e3, mbit * 1e6 / 8


@dataclass(frozen=True)
class LlmCostModel:
    """Fixed software costs of the runtime (seconds)."""

    message_overhead_s: float = 6e-5  # one collective or hop message, at each end
    # One stage step: receive, queue, dispatch, reply. `bench llm --strategies` on the
    # 2-core dev box (3 agents and the coordinator on 2 cores, so each wake-up waits
    # for one): single-stage layouts measured 3.4-6.5 ms over the weights and links,
    # each further pipeline stage 3-11 ms more (measured against predicted, 0.6 ms then).
    step_overhead_s: float = 4e-3
    layer_overhead_s: float = 4e-5  # one layer of one step: the kernels' Python calls
    # One collective among more members on one machine than it has cores: a member is
    # descheduled while the others wait for it (about one scheduler slice).
    oversubscribed_wait_s: float = 3e-3
    # The engine's decode rate / its device's decode probe (`decode_gbps`): a step also
    # runs norms, attention and the head's gather. Dev box, quiet: probe 26-27 GB/s, one
    # agent decoding 1.08 GB in 41.7 ms (25.9 GB/s).
    engine_efficiency: float = 0.95
    # The decode probe / the bare streaming read (`mem_bandwidth_gbps`), for profiles
    # without the probe (older ones, presets): 26-27 against 33-34 GB/s on the dev box.
    bare_read_fraction: float = 0.8


def _probe(device: DeviceLike, field: str) -> float:
    """A profile's measured GB/s `field`, 0 where absent (older profiles, presets)."""
    value = getattr(device, field, 0.0)
    return float(value) if isinstance(value, int | float) and value > 0 else 0.0


def decode_rate(device: DeviceLike, model: LlmCostModel | None = None) -> float:
    """Bytes of weights per second a decode step streams on `device`: its decode probe
    (`decode_gbps`; unmeasured: its bare read, `mem_bandwidth_gbps`) × the engine's
    efficiency."""
    m = model or DEFAULT_LLM_COST
    base = _probe(device, "decode_gbps") or float(device.mem_bandwidth_gbps) * \
        m.bare_read_fraction
    return base * 1e9 * m.engine_efficiency


def host_decode_rate(device: DeviceLike, model: LlmCostModel | None = None) -> float:
    """Bytes/s all agents on `device`'s machine decode together (its all-core probe,
    `host_decode_gbps`, × the engine's efficiency), or inf where unmeasured."""
    base = _probe(device, "host_decode_gbps")
    return base * 1e9 * (model or DEFAULT_LLM_COST).engine_efficiency if base else math.inf


DEFAULT_LLM_COST = LlmCostModel()


@dataclass(frozen=True)
class LinkTable:
    """One-way latency (s) and bandwidth (bytes/s) between devices by index, and to the
    coordinator (the app that sends each step and samples the logits)."""

    latency_s: tuple[tuple[float, ...], ...]
    bandwidth: tuple[tuple[float, ...], ...]
    coordinator_latency_s: float = 0.0
    coordinator_bandwidth: float = math.inf
    # Devices that are agents on one machine (a local cluster): the machine of each
    # device and its cores ((): every device its own machine). A tensor group's members
    # on one machine run at once, so they share its cores.
    hosts: tuple[str, ...] = ()
    cores: tuple[int, ...] = ()

    def crowding(self, members: Sequence[int], member: int) -> float:
        """How many times more group members run on `member`'s machine than it has
        cores (at least 1: no slowdown)."""
        if not self.hosts:
            return 1.0
        host = self.hosts[member]
        together = sum(1 for m in members if self.hosts[m] == host)
        cores = self.cores[member] if self.cores and self.cores[member] > 0 else together
        return max(1.0, together / cores)

    @classmethod
    def uniform(cls, n: int, rtt_s: float, bandwidth: float,
                coordinator: bool = True) -> LinkTable:
        """n devices on identical links; the coordinator on one of the same kind."""
        lat = tuple(tuple(0.0 if i == j else rtt_s / 2 for j in range(n)) for i in range(n))
        bw = tuple(tuple(math.inf if i == j else bandwidth for j in range(n)) for i in range(n))
        return cls(lat, bw, rtt_s / 2 if coordinator else 0.0,
                   bandwidth if coordinator else math.inf)

    @classmethod
    def from_links(cls, names: Sequence[str], links: Links | None = None,
                   rtts: Mapping[tuple[int, int], float] | None = None,
                   coordinator: tuple[float, float] | None = None,
                   hosts: Sequence[str] = (), cores: Sequence[int] = ()) -> LinkTable:
        """From measured `Links` (by name) and/or round trips by index pair; pairs not
        measured take the default link. `coordinator`: (rtt_s, bytes/s), default none."""
        n = len(names)
        lat = [[0.0] * n for _ in range(n)]
        bw = [[math.inf] * n for _ in range(n)]
        for i in range(n):
            for j in range(n):
                if i == j:
                    continue
                rtt, rate = (links.params(names[i], names[j]) if links is not None
                             else (DEFAULT_RTT_S, DEFAULT_BANDWIDTH))
                if rtts is not None and ((i, j) in rtts or (j, i) in rtts):
                    rtt = rtts.get((i, j), rtts.get((j, i), rtt))
                lat[i][j], bw[i][j] = rtt / 2, rate
        c_lat, c_bw = (0.0, math.inf) if coordinator is None else (
            coordinator[0] / 2, coordinator[1])
        return cls(tuple(map(tuple, lat)), tuple(map(tuple, bw)), c_lat, c_bw, tuple(hosts),
                   tuple(cores))

    def rtts(self, members: Sequence[int]) -> dict[tuple[int, int], float]:
        """Round trips between `members`, indexed by their position in `members`."""
        return {(a, b): 2 * self.latency_s[i][j] for a, i in enumerate(members)
                for b, j in enumerate(members) if a != b}

    def matrices(self, members: Sequence[int]) -> tuple[list[list[float]], list[list[float]]]:
        lat = [[self.latency_s[i][j] for j in members] for i in members]
        bw = [[self.bandwidth[i][j] for j in members] for i in members]
        return lat, bw


def share_time(shape: DecoderShape, share: TensorShare, gflops: float, tokens: int,
               rate: float | None = None) -> float:
    """One step of `tokens` tokens through the share: its weights at the decode `rate`
    (bytes/s; None: the plan's memory-bandwidth figure), its disk reads when streaming
    (the plan's per-token time), or its arithmetic at the device's rate, the slowest."""
    flops = 2.0 * share.weight_bytes / shape.bytes_per_element * tokens
    weights = share.weight_bytes / rate if rate else 0.0
    return max(share.compute_s_per_token, weights, flops / max(gflops * 1e9, 1.0))


def group_time(plan: TensorPlan, members: Sequence[int], gflops: Sequence[float],
               links: LinkTable, tokens: int, rows: int,
               model: LlmCostModel = DEFAULT_LLM_COST,
               rates: Sequence[float] | None = None,
               host_rates: Sequence[float] | None = None) -> float:
    """One step of a stage's group: `tokens` through its layers, `rows` logits rows
    gathered to its hub if it holds the LM head. `rates`: decode bytes/s by device;
    `host_rates`: what all cores of each device's machine stream together — members
    on one machine (`links.hosts`) read their weights at once through its memory."""
    shape, shares = plan.shape, plan.shares
    first, end = shares[0].layer_range(shape.layers)
    n_layers = end - first
    crowding = [links.crowding(members, m) for m in members]
    compute = max(share_time(shape, s, gflops[m], tokens, rates[m] if rates else None) * c
                  for s, m, c in zip(shares, members, crowding, strict=True))
    if host_rates and links.hosts and len(members) > 1:
        for host in {links.hosts[m] for m in members}:
            mine = [(s, m) for s, m in zip(shares, members, strict=True)
                    if links.hosts[m] == host]
            if len(mine) > 1:
                compute = max(compute, sum(s.weight_bytes for s, _ in mine)
                              / host_rates[mine[0][1]])
    total = compute + n_layers * model.layer_overhead_s + model.step_overhead_s
    if len(shares) > 1:
        lat, bw = links.matrices(members)
        vector = tokens * shape.hidden * 4
        held = max(s.n_vocab_rows for s in shares)
        collectives = 2 * n_layers + (1 if held else 0)
        total += 2 * n_layers * allreduce_time(pick(plan.allreduce, vector), vector,
                                               plan.hub, lat, bw, model.message_overhead_s)
        if held:
            total += gather_time(rows * held * 4, plan.hub, lat, bw, model.message_overhead_s)
        if max(crowding) > 1:
            total += collectives * model.oversubscribed_wait_s
    return total


def stage_schedule(shape: DecoderShape, members: Sequence[int], links: LinkTable,
                   model: LlmCostModel = DEFAULT_LLM_COST) -> tuple[tuple[int, str], ...]:
    """The allreduce algorithm per payload size for a stage's group over these links
    (fp32 rows of `hidden` for 1, 2, 4, ... tokens up to the shape's context): what its
    agents run (`TensorPlan.allreduce`) and what `group_time` prices."""
    if len(members) < 2:
        return ()
    sizes, tokens = [], 1
    while tokens < shape.max_context:
        sizes.append(4 * shape.hidden * tokens)
        tokens *= 2
    sizes.append(4 * shape.hidden * max(1, shape.max_context))
    lat, bw = links.matrices(members)
    return allreduce_schedule(sizes, lat, bw, model.message_overhead_s)


def activation_hop(shape: DecoderShape, src: int, dsts: Sequence[int], links: LinkTable,
                   tokens: int, model: LlmCostModel = DEFAULT_LLM_COST) -> float:
    """The hidden state of `tokens` tokens from device `src` to every device in `dsts`
    (sent one after another; the latencies overlap)."""
    nbytes = tokens * shape.hidden * 4
    times = [hop_time(nbytes, links.latency_s[src][d], links.bandwidth[src][d],
                      model.message_overhead_s) for d in dsts]
    return max(links.latency_s[src][d] for d in dsts) + sum(
        t - links.latency_s[src][d] for t, d in zip(times, dsts, strict=True))


def step_time(plans: Sequence[TensorPlan], members: Sequence[Sequence[int]],
              gflops: Sequence[float], links: LinkTable, tokens: int, micro_batches: int,
              rows: int | None = None, model: LlmCostModel = DEFAULT_LLM_COST,
              rates: Sequence[float] | None = None,
              host_rates: Sequence[float] | None = None) -> float:
    """One step of `tokens` tokens (`rows` logits rows, default one per token) through
    the stages `plans` (devices `members[k]` by index), cut into `micro_batches`."""
    m = max(1, min(micro_batches, tokens))
    per = math.ceil(tokens / m)
    per_rows = math.ceil((tokens if rows is None else rows) / m)
    shape = plans[0].shape
    stage = [group_time(p, g, gflops, links, per, per_rows, model, rates, host_rates)
             for p, g in zip(plans, members, strict=True)]
    hops = [activation_hop(shape, members[k][plans[k].hub], members[k + 1], links, per, model)
            for k in range(len(plans) - 1)] + [0.0]
    first = sum(stage) + sum(hops)
    rest = (m - 1) * max(s + h for s, h in zip(stage, hops, strict=True))
    rows_out = tokens if rows is None else rows
    io = 2 * (links.coordinator_latency_s + 2 * model.message_overhead_s) + (
        rows_out * shape.vocab * 4 + tokens * 8) / links.coordinator_bandwidth
    return first + rest + io


__all__ = ["DEFAULT_BANDWIDTH", "DEFAULT_LLM_COST", "DEFAULT_RTT_S", "NAMED_LINKS", "LinkTable",
           "LlmCostModel", "activation_hop", "decode_rate", "group_time", "host_decode_rate",
           "parse_link", "share_time", "stage_schedule", "step_time"]
