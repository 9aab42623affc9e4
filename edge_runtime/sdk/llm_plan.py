"""Planning an LLM deployment over agents: budgets, link probes, and 4-bit shares.

Why a module of its own: `deploy_llm` (`llm.py`) only sequences the deploy; what each
agent is asked to hold, and what the plan predicts, is decided here by small pure
functions (apart from reading the cluster's reported profiles and measured links).

4-bit weights (`quantize="q4"`): the partitioner's `DecoderShape.bytes_per_element`
is an integer, and a 4-bit weight with its fp32 block scale costs 0.625 bytes, so the
split is planned on the fp32 shape (the agents convert fp32 slices on disk, and the
split is by bandwidth ratio, which does not depend on the element size), uncapped by
the budgets since 4-bit shares are never streamed; `quantize_plan` then rewrites each
share's bytes, predicted time and peak memory for 4-bit kernels, and
`check_q4_budgets` refuses, before any agent loads, a budget that cannot hold the
4-bit share resident (the engine's rule: `edge_runtime.llm.worker.TensorWorker`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from edge_runtime.errors import ConfigError
from edge_runtime.protocol import QUANTIZE_CHOICES
from edge_runtime.sdk.agents import Agents
from edge_runtime.units import parse_size

if TYPE_CHECKING:
    from edge_runtime.llm import LlmConfig
    from partitioner.tensor import DecoderShape, DeviceLike, TensorPlan, TensorShare

log = logging.getLogger(__name__)

Budget = str | int | None

# Marks a plan whose shares already describe 4-bit weights (so it is not rescaled).
Q4_NOTE = "4-bit weights (MatMulNBits, block 32): bytes, time and memory of 4-bit shares"
# Bytes per weight of a 4-bit matrix: half a byte of code plus one fp32 scale per 32.
Q4_BYTES_PER_WEIGHT = 0.5 + 4 / 32
Q4_BLOCK = 32
# Upper bound of the alignment padding in one converted block file (`slices._write_block`
# pads each of at most 5 arrays to 64 bytes).
_BLOCK_PADDING = 5 * 64


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


def check_quantize(quantize: str | None) -> None:
    if quantize not in QUANTIZE_CHOICES:
        raise ConfigError(f"quantize={quantize!r} is not supported; use None (fp32 weights) "
                          "or 'q4' (4-bit weights, resident shares only)")


def plan_llm(cluster: Agents, config: LlmConfig, digest: str, names: Sequence[str],
             budgets: Sequence[int | None], max_context: int, *,
             quantize: str | None = None) -> TensorPlan:
    """The tensor plan over the agents' profiles (pure apart from the link probes).

    fp32: budgets cap each agent's window (streaming). "q4": shares by bandwidth, every
    one resident in 4-bit (`quantize_plan`), `ConfigError` for a budget too small."""
    from partitioner.tensor import plan_tensor_parallel

    check_quantize(quantize)
    profiles = [cluster.info(n).profile for n in names]
    plan = plan_tensor_parallel(config.decoder_shape(max_context), profiles,
                                memory_budgets=None if quantize else list(budgets),
                                links=_rtts(cluster, names), streaming=True,
                                model_digest=digest)
    if quantize == "q4":
        plan = quantize_plan(plan, profiles)
        check_q4_budgets(plan, budgets)
    return plan


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


# --- 4-bit shares (pure) ---

def _matrices(shape: DecoderShape, share: TensorShare) -> list[tuple[int, int]]:
    """(K, N) of every matrix of the share, used as x @ W (the worker's layout)."""
    hd, nkv = shape.head_dim, share.n_kv_heads
    nq = nkv * shape.group
    cols, rows = share.n_columns, share.n_vocab_rows
    layer = [(shape.hidden, (nq + 2 * nkv) * hd), (nq * hd, shape.hidden)] if nkv else []
    if cols:
        layer += [(shape.hidden, 2 * cols), (cols, shape.hidden)]
    head = [(shape.hidden, rows)] if rows else []
    return layer * shape.layers + head


def q4_weight_bytes(shape: DecoderShape, share: TensorShare) -> int:
    """Bytes of the share's matrices as 4-bit kernels (a K not divisible by 32 stays fp32)."""
    total = 0.0
    for k, n in _matrices(shape, share):
        total += k * n * (Q4_BYTES_PER_WEIGHT if k % Q4_BLOCK == 0 else 4)
    return int(total)


def fp32_block_bytes(shape: DecoderShape, share: TensorShare) -> tuple[int, int]:
    """(all blocks, largest block) of the share's converted fp32 slices, bounded from above:
    the matrices plus every norm and possible bias vector (`slices.convert_share`)."""
    h, hd, nkv, pad = shape.hidden, shape.head_dim, share.n_kv_heads, _BLOCK_PADDING
    vectors = (h + h + (nkv * shape.group + 2 * nkv) * hd) * 4  # norm, bo, bqkv
    attn = nkv * shape.kv_group_bytes() + vectors + pad
    mlp = share.n_columns * shape.mlp_column_bytes() + h * 4 + pad
    largest = max(attn, mlp)
    rows_per_chunk = max(1, largest // (h * 4))
    chunks = max(1, math.ceil(share.n_vocab_rows / rows_per_chunk))
    head = share.n_vocab_rows * h * 4 + chunks * (h * 4 + pad)
    return (shape.layers * (attn + mlp) + head,
            max(largest, rows_per_chunk * h * 4 + h * 4 + pad))


def q4_memory_bytes(shape: DecoderShape, share: TensorShare) -> int:
    """Peak bytes an agent needs for a 4-bit share: KV cache + activation reserve + the
    largest of: the engine's rule (`TensorWorker`: a quarter of the fp32 blocks; codes
    and scales are 0.16 of them, the rest is room for the block being converted), twice
    the 4-bit bytes (measured: four 2048x5632 kernels, 27.5 MiB of codes and scales, held
    56 MiB of RSS after the fp32 source was freed and the heap trimmed; onnxruntime keeps
    the initializer and its prepacked copy),
    and the largest fp32 block, which loading reads whole."""
    from partitioner.tensor import ACTIVATION_RESERVE_BYTES

    blocks, largest = fp32_block_bytes(shape, share)
    weights = max(blocks // 4, 2 * q4_weight_bytes(shape, share), largest)
    return shape.kv_cache_bytes(share.n_kv_heads) + ACTIVATION_RESERVE_BYTES + weights


def quantize_plan(plan: TensorPlan, profiles: Sequence[DeviceLike]) -> TensorPlan:
    """The same split with 4-bit shares: weight bytes, time per token (the planner's
    max(bytes / bandwidth, FLOPs / GFLOPS)), peak memory; every share resident."""
    if Q4_NOTE in plan.notes:
        return plan
    shape = plan.shape
    shares = []
    for share, dev in zip(plan.shares, profiles, strict=True):
        q4 = q4_weight_bytes(shape, share)
        flops = 2.0 * share.weight_bytes / shape.bytes_per_element
        compute = max(q4 / (float(dev.mem_bandwidth_gbps) * 1e9),
                      flops / max(1e-9, float(dev.gflops_fp32) * 1e9))
        shares.append(dataclasses.replace(
            share, weight_bytes=q4, compute_s_per_token=compute,
            peak_memory_bytes=q4_memory_bytes(shape, share), streaming=False, window_bytes=0))
    return dataclasses.replace(
        plan, shares=tuple(shares),
        predicted_s_per_token=max(s.compute_s_per_token for s in shares),
        notes=(*plan.notes, Q4_NOTE))


def check_q4_budgets(plan: TensorPlan, budgets: Sequence[int | None]) -> None:
    """`ConfigError` naming the first agent whose budget cannot hold its 4-bit share."""
    for share, budget in zip(plan.shares, budgets, strict=True):
        if budget is not None and share.peak_memory_bytes > budget:
            raise ConfigError(
                f"agent {share.device}: 4-bit weights serve resident shares only, and its "
                f"share needs {share.peak_memory_bytes / 1e6:.1f} MB (KV cache, activations, "
                f"the 4-bit weights and room to convert them) but its memory budget is "
                f"{budget / 1e6:.1f} MB; raise the memory budget, deploy on more agents, or "
                "use quantize=None (fp32 weights stream through a sliding window)")


__all__ = ["Q4_NOTE", "Budget", "blas_threads", "budgets_for", "check_plan", "check_q4_budgets",
           "check_quantize", "fp32_block_bytes", "host_of", "plan_llm", "q4_memory_bytes",
           "q4_weight_bytes", "quantize_plan"]
