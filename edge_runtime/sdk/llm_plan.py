"""Planning an LLM deployment over agents: budgets, link probes, and 4-bit shares.

Why a module of its own: `deploy_llm` (`llm.py`) only sequences the deploy; what each
agent is asked to hold, and what the plan predicts, is decided here by small pure
functions (apart from reading the cluster's reported profiles and measured links).

4-bit weights (`quantize="q4"`): `llm_q4.py` rewrites each share for 4-bit kernels, or
for int8 blocks streaming where the budget cannot take the 4-bit loading peak, and
`check_q4_budgets` refuses a budget that allows neither; its names are re-exported here.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from edge_runtime.errors import ConfigError
from edge_runtime.protocol import QUANTIZE_CHOICES
from edge_runtime.sdk.agents import Agents
from edge_runtime.sdk.llm_q4 import (
    Q4_NOTE,
    Q4_STREAM_NOTE,
    check_q4_budgets,
    fp32_block_bytes,
    int8_block_bytes,
    q4_memory_bytes,
    q4_stream_residency,
    q4_weight_bytes,
    quantize_plan,
    read_bps_of,
    stream_note,
)
from edge_runtime.units import parse_size

if TYPE_CHECKING:
    from edge_runtime.llm import LlmConfig
    from partitioner.tensor import TensorPlan

log = logging.getLogger(__name__)

Budget = str | int | None

def host_of(address: str) -> str:
    return address.removeprefix("tcp://").rsplit(":", 1)[0]


def budgets_for(cluster: Agents, names: Sequence[str],
                memory_budget: Budget | Sequence[Budget]) -> list[int | None]:
    """Per agent: the given budget (one for all, or one each), else the agent's own."""
    if memory_budget is None:
        return [cluster.info(n).memory_budget for n in names]
    if isinstance(memory_budget, str | int):
        return [parse_size(memory_budget)] * len(names)
    given = list(memory_budget)
    if len(given) != len(names):
        raise ConfigError(f"memory_budget has {len(given)} entries for {len(names)} agents")
    return [cluster.info(n).memory_budget if b is None else parse_size(b)
            for n, b in zip(names, given, strict=True)]


def _rtts(cluster: Agents, names: Sequence[str]) -> dict[tuple[int, int], float] | None:
    """Measured round trips between the chosen agents, by plan index (None for one agent)."""
    if len(names) < 2:
        return None
    index = {n: i for i, n in enumerate(names)}
    table: dict[tuple[int, int], float] = {}
    for link in cluster.links():
        if link.src in index and link.dst in index:
            table[(index[link.src], index[link.dst])] = link.rtt_s
    return table


# Link figures assumed for a pair of agents the cluster has not measured (loopback-like).
_UNMEASURED_RTT_S = 200e-6
_UNMEASURED_BANDWIDTH = 1e9


def link_matrices(cluster: Agents, names: Sequence[str]) -> tuple[list[list[float]],
                                                                  list[list[float]]]:
    """(one-way latency, bandwidth) between the chosen agents, by plan index, from the
    cluster's measured links (half the round trip).

    One probe per pair is noisy (on one host, a busy moment made one loopback pair look
    5x slower than the others), and the choice of algorithm follows the slowest link
    it uses; so pairs of agents on one host, whose links are alike, all get the median
    of that host's measured pairs, and a pair measured in both directions its better
    figure. A pair not measured gets the median of all measured pairs (or a
    loopback-like guess when none was)."""
    n = len(names)
    index = {name: i for i, name in enumerate(names)}
    measured = [(index[link.src], index[link.dst], link.rtt_s, link.bandwidth_bytes_per_s)
                for link in (cluster.links() if n > 1 else [])
                if link.src in index and link.dst in index and link.src != link.dst]
    return robust_matrices([host_of(cluster.info(name).address) for name in names], measured)


def robust_matrices(hosts: Sequence[str], measured: Sequence[tuple[int, int, float, float]]
                    ) -> tuple[list[list[float]], list[list[float]]]:
    """(one-way latency, bandwidth) matrices for members on `hosts` from measured
    (src, dst, rtt_s, bytes/s) probes, by the rules of `link_matrices` (pure)."""
    import statistics

    n = len(hosts)
    rtt: dict[tuple[int, int], float] = {}
    bw: dict[tuple[int, int], float] = {}
    for src, dst, rtt_s, bytes_per_s in measured:
        key = (min(src, dst), max(src, dst))
        rtt[key] = min(rtt_s, rtt.get(key, rtt_s))
        bw[key] = max(bytes_per_s, bw.get(key, 0.0))
    same_host: dict[str, list[tuple[int, int]]] = {}
    for i, j in rtt:
        if hosts[i] == hosts[j]:
            same_host.setdefault(hosts[i], []).append((i, j))
    for host, pairs in same_host.items():
        host_rtt = statistics.median(rtt[p] for p in pairs)
        host_bw = statistics.median(bw[p] for p in pairs)
        for i in range(n):
            for j in range(i + 1, n):
                if hosts[i] == hosts[j] == host:
                    rtt[(i, j)], bw[(i, j)] = host_rtt, host_bw
    mid_rtt = statistics.median(rtt.values()) if rtt else _UNMEASURED_RTT_S
    mid_bw = statistics.median(bw.values()) if bw else _UNMEASURED_BANDWIDTH
    latency = [[0.0 if i == j else rtt.get((min(i, j), max(i, j)), mid_rtt) / 2
                for j in range(n)] for i in range(n)]
    bandwidth = [[float("inf") if i == j else bw.get((min(i, j), max(i, j)), mid_bw)
                  for j in range(n)] for i in range(n)]
    return latency, bandwidth


def allreduce_payloads(hidden: int, max_context: int, max_batch: int = 1) -> list[int]:
    """The allreduce sizes a deployment sends: fp32 rows of `hidden`, one per token of a
    step, for 1, 2, 4, ... tokens up to a whole context per sequence of a batch."""
    sizes, tokens = [], 1
    while tokens < max_context * max_batch:
        sizes.append(4 * hidden * tokens)
        tokens *= 2
    return [*sizes, 4 * hidden * max_context * max_batch]


def with_allreduce_schedule(plan: TensorPlan, cluster: Agents, names: Sequence[str],
                            max_batch: int = 1, sync: str = "fp32") -> TensorPlan:
    """The plan with its allreduce algorithm per payload size recorded, chosen by the one
    cost model (`transports.cost`) from the measured links, for the bytes that travel
    in the `sync` format (the schedule's bounds stay fp32 payload sizes)."""
    from transports.cost import MESSAGE_OVERHEAD_S
    from transports.syncformat import sync_schedule

    if len(names) < 2:
        return plan
    latency, bandwidth = link_matrices(cluster, names)
    payloads = allreduce_payloads(plan.shape.hidden, plan.shape.max_context, max_batch)
    schedule = sync_schedule(payloads, latency, bandwidth, MESSAGE_OVERHEAD_S, sync)
    log.info("allreduce per payload (from measured links): %s",
             ", ".join(f"≤ {upto} B: {name}" for upto, name in schedule))
    return dataclasses.replace(plan, allreduce=schedule)


def check_quantize(quantize: str | None) -> None:
    if quantize not in QUANTIZE_CHOICES:
        raise ConfigError(f"quantize={quantize!r} is not supported; use None (fp32 weights) "
                          "or 'q4' (4-bit weights; a share whose budget cannot hold them "
                          "streams int8 blocks)")


def plan_llm(cluster: Agents, config: LlmConfig, digest: str, names: Sequence[str],
             budgets: Sequence[int | None], max_context: int, *,
             quantize: str | None = None, sync: str = "fp32") -> TensorPlan:
    """The tensor plan over the agents' profiles (pure apart from the link probes).

    fp32: budgets cap each agent's window (streaming). "q4": shares by bandwidth, 4-bit
    resident where the budget takes the loading peak, else int8 blocks streaming
    (`quantize_plan`); `ConfigError` for a budget too small for either."""
    from partitioner.tensor import plan_tensor_parallel

    check_quantize(quantize)
    profiles = [cluster.info(n).profile for n in names]
    plan = plan_tensor_parallel(config.decoder_shape(max_context), profiles,
                                memory_budgets=None if quantize else list(budgets),
                                links=_rtts(cluster, names), streaming=True,
                                model_digest=digest)
    if quantize == "q4":
        plan = quantize_plan(plan, profiles, budgets)
        check_q4_budgets(plan, budgets)
    return with_allreduce_schedule(plan, cluster, names, sync=sync)


def check_plan(plan: TensorPlan, config: LlmConfig, names: Sequence[str]) -> None:
    shape = config.decoder_shape(plan.shape.max_context)
    if plan.shape != shape:
        raise ConfigError(f"the plan was made for another model ({plan.shape}), not this "
                          f"checkpoint ({shape}); plan again")
    if [s.device for s in plan.shares] != list(names):
        raise ConfigError(f"the plan's devices {[s.device for s in plan.shares]} are not the "
                          f"agents {list(names)}; name the shares after the agents")


def blas_threads(cluster: Agents, names: Sequence[str]) -> list[int | None]:
    """Per agent: None when it has its host to itself, else its host's cores divided
    among the deployment's agents there (their BLAS pools would oversubscribe it)."""
    hosts = [host_of(cluster.info(n).address) for n in names]
    out: list[int | None] = []
    for name, host in zip(names, hosts, strict=True):
        sharing = hosts.count(host)
        cores = max(1, int(cluster.info(name).profile.cores))
        out.append(None if sharing == 1 else max(1, cores // sharing))
    return out


__all__ = [
    "Q4_NOTE",
    "Q4_STREAM_NOTE",
    "Budget",
    "allreduce_payloads",
    "blas_threads",
    "budgets_for",
    "check_plan",
    "check_q4_budgets",
    "check_quantize",
    "fp32_block_bytes",
    "host_of",
    "int8_block_bytes",
    "link_matrices",
    "plan_llm",
    "q4_memory_bytes",
    "q4_stream_residency",
    "q4_weight_bytes",
    "quantize_plan",
    "read_bps_of",
    "robust_matrices",
    "stream_note",
    "with_allreduce_schedule",
]
