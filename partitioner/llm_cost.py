"""Predicted decode time of an LLM layout: compute per share, α-β time per collective
and per activation hop (`transports.cost`, the one model of communication).

One forward step of b tokens through a layout of stages (each a tensor-parallel group
over a layer range), cut into m micro-batches of b/m tokens::

    stage_k(t)  = max over members of max(weight bytes / bandwidth, flops · t / rate)
                  (+ disk reads of a streaming share) + per-layer and per-step overheads
                  + 2 star allreduces per layer of t hidden vectors (groups of 2 or more)
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
collectives waits about one scheduler slice for a descheduled member.

The overheads are this Python runtime's fixed costs (`LlmCostModel`; checked with
`edge-runtime bench llm --strategies`, docs/llm-cluster.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from partitioner.cost import Links
from partitioner.tensor_plan import DecoderShape, TensorPlan, TensorShare
from transports.cost import gather_time, hop_time, star_allreduce_time

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
    step_overhead_s: float = 6e-4  # one stage step: receive, queue, dispatch, reply
    layer_overhead_s: float = 4e-5  # one layer of one step: the kernels' Python calls
    # One collective among more members on one machine than it has cores: a member is
    # descheduled while the others wait for it (about one scheduler slice).
    oversubscribed_wait_s: float = 3e-3


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


def share_time(shape: DecoderShape, share: TensorShare, gflops: float, tokens: int) -> float:
    """One step of `tokens` tokens through the share: its planned per-token time (memory,
    or disk when streaming) or its arithmetic at the device's rate, whichever is slower."""
    flops = 2.0 * share.weight_bytes / shape.bytes_per_element * tokens
    return max(share.compute_s_per_token, flops / max(gflops * 1e9, 1.0))


def group_time(plan: TensorPlan, members: Sequence[int], gflops: Sequence[float],
               links: LinkTable, tokens: int, rows: int,
               model: LlmCostModel = DEFAULT_LLM_COST) -> float:
    """One step of a stage's group: `tokens` through its layers, `rows` logits rows
    gathered to its hub if it holds the LM head."""
    shape, shares = plan.shape, plan.shares
    first, end = shares[0].layer_range(shape.layers)
    n_layers = end - first
    crowding = [links.crowding(members, m) for m in members]
    compute = max(share_time(shape, s, gflops[m], tokens) * c
                  for s, m, c in zip(shares, members, crowding, strict=True))
    total = compute + n_layers * model.layer_overhead_s + model.step_overhead_s
    if len(shares) > 1:
        lat, bw = links.matrices(members)
        vector = tokens * shape.hidden * 4
        held = max(s.n_vocab_rows for s in shares)
        collectives = 2 * n_layers + (1 if held else 0)
        total += 2 * n_layers * star_allreduce_time(vector, plan.hub, lat, bw,
                                                    model.message_overhead_s)
        if held:
            total += gather_time(rows * held * 4, plan.hub, lat, bw, model.message_overhead_s)
        if max(crowding) > 1:
            total += collectives * model.oversubscribed_wait_s
    return total


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
              rows: int | None = None, model: LlmCostModel = DEFAULT_LLM_COST) -> float:
    """One step of `tokens` tokens (`rows` logits rows, default one per token) through
    the stages `plans` (devices `members[k]` by index), cut into `micro_batches`."""
    m = max(1, min(micro_batches, tokens))
    per = math.ceil(tokens / m)
    per_rows = math.ceil((tokens if rows is None else rows) / m)
    shape = plans[0].shape
    stage = [group_time(p, g, gflops, links, per, per_rows, model)
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
           "LlmCostModel", "activation_hop", "group_time", "parse_link", "share_time",
           "step_time"]
