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
concurrent streams is S / step(S, m) for the best m ≤ min(S, stages); time to first
token of a T-token prompt is step(T, stages) with one logits row (the runner pipelines
a prompt in one chunk per stage).

The batching term (`batch_factor`, `share_time`): decode reads every weight once per
step whatever b is, but a step of b sequences is not free: this engine leaves numpy's
matrix-vector product for onnxruntime's prepacked MatMul at two rows or more (a fixed
`packed_switch_fraction` of the weight-read time), each further sequence adds a row to
every product (`batch_row_fraction`) and reads its own KV cache (`decode_context`
tokens of it), each further prompt token a row and its attention
(`prompt_row_fraction`), and the coordinator does its per-sequence work
(`sequence_overhead_s`). Tensor groups also carry b rows through every allreduce, and a
pipeline cut into m micro-batches reads each stage's weights m times and pays each
stage's per-step overhead m times to fill its bubbles — so on memory-bound devices one
micro-batch stays best, and micro-batches pay where rows are costly. At b = 1 every
term is the single-stream figure. The constants are fractions of the weight-read time,
measured on the dev box (`LlmCostModel`), so a device whose core computes and streams
in the same ratio keeps them.

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
    # The batching term (`batched_share_time`), as fractions of a share's weight-read
    # time (W / decode rate), so they carry over to devices whose core computes and
    # streams in the same ratio. Dev box, one 1.08 GB share, one BLAS thread, packed
    # kernels (`TensorWorker(slots > 1)`), in-process (`llm.local.LocalRunner`), medians
    # of 6 interleaved steps: 1 / 2 / 4 / 8 sequences 43.1 / 53.9 / 59.5 / 74.4 ms; one
    # sequence's 128-token prompt 620 ms (16 tokens: 168 ms). Checked through 2 real
    # agents (runner steps of 1 and 4 sequences, 12 interleaved rounds, machine at load
    # ~7): 4 ÷ 1 sequences' step 1.41 / 1.45 / 1.32 for single / tensor / pipeline
    # against 1.42 / 1.38 / 1.39 predicted.
    # More than one row leaves numpy's matrix-vector product for onnxruntime's prepacked
    # MatMul (`llm/packed.py`), which streams W ~17 % slower.
    packed_switch_fraction: float = 0.17
    # Each further sequence of a decode step: one more row of every matrix product
    # (its arithmetic is not all hidden under the weight stream), its RoPE and softmax.
    batch_row_fraction: float = 0.079
    # Each further token of a prompt (a prefill: rows = 1 < tokens), which also attends
    # over the prompt so far: fitted at 128 tokens (16-token prompts run ~30 % over).
    prompt_row_fraction: float = 0.104
    # The context (tokens) each sequence's attention reads its KV cache over in a decode
    # step (capped by the shape's max_context): a chat turn's.
    decode_context: int = 128
    # The coordinator's own work per further sequence of a step (the scheduler's
    # bookkeeping, sampling a row, handing out the token), on the app's thread. Dev box,
    # examples/tinylm (weights negligible) through 2 agents, `bench llm --strategies`:
    # 4 streams took 0.36-0.51 ms more per further sequence than one stream's step, of
    # which ~0.1 ms is the engine's per-sequence attention (in `batch_row_fraction`).
    sequence_overhead_s: float = 3e-4


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


def batch_factor(tokens: int, rows: int | None = None,
                 model: LlmCostModel | None = None) -> float:
    """A step's weight-read time over a single-stream step's, for `tokens` tokens of
    `rows` sequences (default: one token each, a batched decode; rows = 1 < tokens: a
    prompt): 1 at one token, then the packed kernels' switch, one
    `batch_row_fraction` per further sequence and one `prompt_row_fraction` per
    further prompt token. Pure, monotonic in both."""
    m = model or DEFAULT_LLM_COST
    if tokens <= 1:
        return 1.0
    return 1.0 + m.packed_switch_fraction + row_factor(tokens, rows, m)


def row_factor(tokens: int, rows: int | None = None,
               model: LlmCostModel | None = None) -> float:
    """The part of `batch_factor` that is arithmetic on the further rows (each core does
    its own share's), without the kernels' switch (a slower read of the same bytes)."""
    m = model or DEFAULT_LLM_COST
    seqs = max(1, min(tokens, tokens if rows is None else rows))
    return m.batch_row_fraction * (seqs - 1) + m.prompt_row_fraction * (tokens - seqs)


def kv_read_bytes(shape: DecoderShape, share: TensorShare, sequences: int,
                  model: LlmCostModel | None = None) -> int:
    """The KV cache bytes `sequences` decode steps read through the share's heads and
    layers, each over `decode_context` tokens (at most the shape's context)."""
    m = model or DEFAULT_LLM_COST
    first, end = share.layer_range(shape.layers)
    context = min(m.decode_context, max(1, shape.max_context))
    return 2 * (end - first) * share.n_kv_heads * shape.head_dim * 4 * context * sequences


def share_time(shape: DecoderShape, share: TensorShare, gflops: float, tokens: int,
               rate: float | None = None, rows: int | None = None,
               model: LlmCostModel | None = None) -> float:
    """One step of `tokens` tokens of `rows` sequences (default one token each) through
    the share: its weights read at the decode `rate` (bytes/s; None: the plan's
    memory-bandwidth figure) times `batch_factor` plus each sequence's KV read; or its
    disk reads when streaming (the plan's per-token time), or its arithmetic at the
    device's rate, whichever is slowest. At one token: the single-stream figure."""
    flops = 2.0 * share.weight_bytes / shape.bytes_per_element * tokens
    seqs = max(1, min(tokens, tokens if rows is None else rows))
    read = share.weight_bytes / rate if rate else share.compute_s_per_token
    weights = read * batch_factor(tokens, rows, model)
    if rate and tokens > 1:
        weights += kv_read_bytes(shape, share, seqs, model) / rate
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
    compute = max(share_time(shape, s, gflops[m], tokens, rates[m] if rates else None,
                             min(rows, tokens) if rows else tokens, model) * c
                  for s, m, c in zip(shares, members, crowding, strict=True))
    if host_rates and links.hosts and len(members) > 1:
        # members on one machine share its memory, not their cores: the reads of all of
        # them at the machine's rate, then the slowest member's arithmetic on its rows
        switch = 1.0 + (model.packed_switch_fraction if tokens > 1 else 0.0)
        extra = row_factor(tokens, min(rows, tokens) if rows else tokens, model)
        for host in {links.hosts[m] for m in members}:
            mine = [(s, m) for s, m in zip(shares, members, strict=True)
                    if links.hosts[m] == host]
            if len(mine) > 1:
                arithmetic = max(s.weight_bytes / (rates[m] if rates else host_rates[m])
                                 for s, m in mine) * extra
                compute = max(compute, sum(s.weight_bytes for s, _ in mine)
                              / host_rates[mine[0][1]] * switch + arithmetic)
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
    # the first sequence's share of the coordinator's work is in `step_overhead_s`
    return first + rest + io + max(0, rows_out - 1) * model.sequence_overhead_s


__all__ = ["DEFAULT_BANDWIDTH", "DEFAULT_LLM_COST", "DEFAULT_RTT_S", "NAMED_LINKS", "LinkTable",
           "LlmCostModel", "activation_hop", "batch_factor", "decode_rate", "group_time",
           "host_decode_rate", "kv_read_bytes", "parse_link", "row_factor", "share_time",
           "stage_schedule", "step_time"]
