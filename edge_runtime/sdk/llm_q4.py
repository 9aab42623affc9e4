"""4-bit shares of an LLM plan: what each costs resident, and the int8 stream instead.

Why a module of its own: planning a deployment (`llm_plan.py`) is budgets, links and
the split; what a 4-bit share reserves, and how a share that cannot take that streams,
are pure functions of the decoder's shape, the share, its budget and its device.

4-bit weights (`quantize="q4"`): the partitioner's `DecoderShape.bytes_per_element`
is an integer, and a 4-bit weight with its fp32 block scale costs 0.625 bytes, so the
split is planned on the fp32 shape (the agents convert fp32 slices on disk, and the
split is by bandwidth ratio, which does not depend on the element size), uncapped by
the budgets; `quantize_plan` then rewrites each share for 4-bit kernels where its
budget takes the peak of loading them (`q4_memory_bytes`, measured: onnxruntime keeps
≈2.7x the codes, and loading peaks well above the settled size), and otherwise for
int8 blocks streaming through the agent's window (onnxruntime's 4-bit kernel is fast
only with its weights prepacked into the session, so it cannot stream:
`edge_runtime.llm.int8slices`): which blocks stay pinned, bytes read per token and the
predicted time come from the same residency plan the agent makes
(`llm.residency.plan_residency`, with the agent's measured disk speed).
`check_q4_budgets` refuses, before any agent loads, a budget that allows neither.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from edge_runtime.errors import ConfigError, MemoryBudgetError

if TYPE_CHECKING:
    from edge_runtime.llm.residency import ResidencyPlan
    from partitioner.tensor import DecoderShape, DeviceLike, TensorPlan, TensorShare

# Marks a plan whose shares already describe 4-bit weights (so it is not rescaled).
Q4_NOTE = "4-bit weights (MatMulNBits, block 32): bytes, time and memory of 4-bit shares"
# Marks a share whose 4-bit kernels do not fit its budget: int8 blocks stream instead.
Q4_STREAM_NOTE = "int8 blocks stream (MatMulInteger)"
# Bytes per weight of a 4-bit matrix: half a byte of code plus one fp32 scale per 32.
Q4_BYTES_PER_WEIGHT = 0.5 + 4 / 32
Q4_BLOCK = 32
# Upper bound of the alignment padding in one converted block file (`slices._write_block`
# pads each of at most 5 arrays to 64 bytes).
_BLOCK_PADDING = 5 * 64


def _layer_matrices(shape: DecoderShape, share: TensorShare
                    ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(K, N) of one layer's attention and MLP matrices of the share, used as x @ W (the
    worker's layout): a mixture of experts has two matrices per expert it holds."""
    hd, nkv = shape.head_dim, share.n_kv_heads
    nq = nkv * shape.group
    attn = [(shape.hidden, (nq + 2 * nkv) * hd), (nq * hd, shape.hidden)] if nkv else []
    if share.n_experts and shape.expert_intermediate:
        width = shape.expert_intermediate
        mlp = [(shape.hidden, 2 * width), (width, shape.hidden)] * share.n_experts
    elif share.n_columns:
        mlp = [(shape.hidden, 2 * share.n_columns), (share.n_columns, shape.hidden)]
    else:
        mlp = []
    return attn, mlp


def _matrices(shape: DecoderShape, share: TensorShare) -> list[tuple[int, int]]:
    """(K, N) of every matrix of the share, used as x @ W (the worker's layout)."""
    attn, mlp = _layer_matrices(shape, share)
    head = [(shape.hidden, share.n_vocab_rows)] if share.n_vocab_rows else []
    return (attn + mlp) * shape.layers + head


def _q4_split(shape: DecoderShape, share: TensorShare) -> tuple[int, int]:
    """(bytes of the 4-bit matrices, bytes of the matrices that stay fp32: K not a
    multiple of 32)."""
    q4 = fp32 = 0
    for k, n in _matrices(shape, share):
        if k % Q4_BLOCK == 0:
            q4 += int(k * n * Q4_BYTES_PER_WEIGHT)
        else:
            fp32 += 4 * k * n
    return q4, fp32


def q4_weight_bytes(shape: DecoderShape, share: TensorShare) -> int:
    """Bytes of the share's matrices as 4-bit kernels (a K not divisible by 32 stays fp32)."""
    return sum(_q4_split(shape, share))


def _vector_bytes(shape: DecoderShape, share: TensorShare) -> tuple[int, int]:
    """fp32 bytes besides the matrices in one layer's attention and MLP blocks, bounded
    from above: norms (a pre-norm, a post-norm for sandwich norms, q/k norms), possible
    biases, and a mixture of experts' router (every device holds all of it)."""
    h, hd, nkv = shape.hidden, shape.head_dim, share.n_kv_heads
    attn = (3 * h + (nkv * shape.group + 2 * nkv) * hd + 2 * hd) * 4
    return attn, 2 * h * 4 + shape.router_bytes()


def fp32_block_bytes(shape: DecoderShape, share: TensorShare) -> tuple[int, int]:
    """(all blocks, largest block) of the share's converted fp32 slices, bounded from above:
    the matrices plus every norm, possible bias vector and router (`slices.convert_share`)."""
    h, nkv, pad = shape.hidden, share.n_kv_heads, _BLOCK_PADDING
    vec_attn, vec_mlp = _vector_bytes(shape, share)
    attn = nkv * shape.kv_group_bytes() + vec_attn + pad
    mlp = share.n_columns * shape.mlp_column_bytes() + vec_mlp + pad * (1 + share.n_experts)
    largest = max(attn, mlp)
    rows_per_chunk = max(1, largest // (h * 4))
    chunks = max(1, math.ceil(share.n_vocab_rows / rows_per_chunk))
    head = share.n_vocab_rows * h * 4 + chunks * (h * 4 + pad)
    return (shape.layers * (attn + mlp) + head,
            max(largest, rows_per_chunk * h * 4 + h * 4 + pad))


def int8_block_bytes(shape: DecoderShape, share: TensorShare) -> list[int]:
    """Bytes of each int8 block file of the share (`llm.int8slices.convert_int8`), in the
    window's order (attention and MLP of every layer, then the LM head's chunks), bounded
    from above: 1 byte per weight, an fp32 scale per output column, fp32 vectors."""
    h, pad = shape.hidden, 64
    vec_attn, vec_mlp = _vector_bytes(shape, share)
    attn_m, mlp_m = _layer_matrices(shape, share)
    attn = sum(k * n + 4 * n for k, n in attn_m) + vec_attn + pad * (5 + 2 * len(attn_m))
    mlp = sum(k * n + 4 * n for k, n in mlp_m) + vec_mlp + pad * (3 + 2 * len(mlp_m))
    _, largest = fp32_block_bytes(shape, share)
    rows_per_chunk = max(1, largest // (h * 4))
    rows = share.n_vocab_rows
    chunks = [min(rows_per_chunk, rows - r0) for r0 in range(0, rows, rows_per_chunk)] or [0]
    head = [r * h + 4 * r + 4 * h + 3 * pad for r in chunks]
    return [attn, mlp] * shape.layers + head


def q4_memory_bytes(shape: DecoderShape, share: TensorShare) -> int:
    """Peak bytes an agent needs to load a 4-bit share resident: KV cache + activation
    reserve + the peak of loading its kernels (`llm.residency.q4_resident_bytes`,
    measured: onnxruntime holds ≈2.4-2.9x the codes and scales, and converting adds
    ≈1.5x the largest fp32 block on top: 791 MiB at peak for 593 MiB settled), with the
    fp32 vectors, the matrices that stay fp32 and, for a mixture of experts, the router
    of every layer (experts x hidden x 4 bytes)."""
    from edge_runtime.llm.residency import q4_resident_bytes
    from partitioner.tensor import ACTIVATION_RESERVE_BYTES

    q4, fp32_matrices = _q4_split(shape, share)
    vec_attn, vec_mlp = _vector_bytes(shape, share)
    chunks = max(1, len(int8_block_bytes(shape, share)) - 2 * shape.layers)
    fp32 = fp32_matrices + shape.layers * (vec_attn + vec_mlp) + chunks * shape.hidden * 4
    _, largest = fp32_block_bytes(shape, share)
    return (shape.kv_cache_bytes(share.n_kv_heads) + ACTIVATION_RESERVE_BYTES
            + q4_resident_bytes(q4, fp32, largest))


def read_bps_of(device: DeviceLike) -> float:
    """A device's measured sequential disk read speed (bytes/s), else the engine's default
    (`llm.residency.DISK_READ_BPS`): what the agent plans its window with too."""
    from edge_runtime.llm.residency import DISK_READ_BPS

    gbps = getattr(device, "disk_read_gbps", None)
    return float(gbps) * 1e9 if isinstance(gbps, int | float) and gbps > 0 else DISK_READ_BPS


def q4_stream_residency(shape: DecoderShape, share: TensorShare, budget: int,
                        read_bps: float) -> ResidencyPlan:
    """Where a "q4" share that cannot load resident under `budget` keeps its int8 blocks
    (the agent's `TensorWorker(stream_quantized=True)` plans the same): which stay pinned,
    bytes read per token, predicted s/token. `MemoryBudgetError` when the window left
    beside the KV cache and activations cannot hold the largest fp32 block (converting
    to int8 reads each whole) or the read-ahead."""
    from edge_runtime.llm.residency import INT8_STREAM_COMPUTE_BPS, plan_residency
    from partitioner.tensor import ACTIVATION_RESERVE_BYTES

    window = budget - shape.kv_cache_bytes(share.n_kv_heads) - ACTIVATION_RESERVE_BYTES
    _, largest = fp32_block_bytes(shape, share)
    if window < largest:
        raise MemoryBudgetError(
            f"agent {share.device}: a memory budget of {budget / 1e6:.1f} MB leaves "
            f"{max(0, window) / 1e6:.1f} MB beside the KV cache and activations, less than "
            f"its largest fp32 block ({largest / 1e6:.1f} MB), which streaming int8 weights "
            f"converts from; use at least {(budget - window + largest) / 1e6:.1f} MB, a "
            "shorter max_context, or more agents")
    sizes = int8_block_bytes(shape, share)
    return plan_residency(sizes, [s / INT8_STREAM_COMPUTE_BPS for s in sizes], window,
                          read_bps)


def quantize_plan(plan: TensorPlan, profiles: Sequence[DeviceLike],
                  budgets: Sequence[int | None] | None = None) -> TensorPlan:
    """The same split with 4-bit shares: weight bytes, time per token (the planner's
    max(bytes / bandwidth, FLOPs / GFLOPS)) and the peak memory of loading them resident;
    a share whose budget (one per share, None = unlimited) cannot take that peak streams
    int8 blocks instead (`q4_stream_residency`): its bytes are the int8 blocks', its
    time the residency plan's, its peak the budget, and a note states the blocks kept,
    bytes read per token and predicted ms/token. A share that cannot even stream stays
    resident, over its budget, for `check_q4_budgets` to refuse."""
    if Q4_NOTE in plan.notes:
        return plan
    shape = plan.shape
    given = list(budgets) if budgets is not None else [None] * len(plan.shares)
    shares, notes = [], []
    for share, dev, budget in zip(plan.shares, profiles, given, strict=True):
        q4 = q4_weight_bytes(shape, share)
        flops = 2.0 * share.weight_bytes / shape.bytes_per_element
        compute = max(q4 / (float(dev.mem_bandwidth_gbps) * 1e9),
                      flops / max(1e-9, float(dev.gflops_fp32) * 1e9))
        need = q4_memory_bytes(shape, share)
        quantized = dataclasses.replace(share, weight_bytes=q4, compute_s_per_token=compute,
                                        peak_memory_bytes=need, streaming=False,
                                        window_bytes=0)
        if budget is not None and budget < need:
            try:
                stream = q4_stream_residency(shape, share, budget, read_bps_of(dev))
            except MemoryBudgetError:
                stream = None
            if stream is not None:
                quantized = dataclasses.replace(
                    share, weight_bytes=sum(int8_block_bytes(shape, share)),
                    compute_s_per_token=stream.predicted_s_per_token,
                    peak_memory_bytes=budget, streaming=True,
                    window_bytes=stream.resident_bytes + stream.buffer_bytes)
                notes.append(stream_note(share.device, need, budget, stream))
        shares.append(quantized)
    return dataclasses.replace(
        plan, shares=tuple(shares),
        predicted_s_per_token=max(s.compute_s_per_token for s in shares),
        notes=(*plan.notes, Q4_NOTE, *notes))


def stream_note(device: str, need: int, budget: int, stream: ResidencyPlan) -> str:
    """The plan's line for a 4-bit share that streams int8 blocks."""
    return (f"{device}: {Q4_STREAM_NOTE}: 4-bit kernels need {need / 1e6:.1f} MB to load "
            f"resident, over the {budget / 1e6:.1f} MB budget; "
            f"{len(stream.resident)}/{len(stream.resident) + len(stream.streamed)} blocks "
            f"pinned, {stream.bytes_read_per_token / 1e6:.1f} MB read per token, predicted "
            f"{stream.predicted_s_per_token * 1e3:.1f} ms/token")


def check_q4_budgets(plan: TensorPlan, budgets: Sequence[int | None]) -> None:
    """`ConfigError` naming the first agent whose budget can neither load its 4-bit share
    resident nor stream it as int8 blocks (`quantize_plan` made every share it could
    stream a streaming one)."""
    from partitioner.tensor import ACTIVATION_RESERVE_BYTES

    for share, budget in zip(plan.shares, budgets, strict=True):
        if budget is not None and share.peak_memory_bytes > budget:
            _, largest = fp32_block_bytes(plan.shape, share)
            least = (plan.shape.kv_cache_bytes(share.n_kv_heads) + ACTIVATION_RESERVE_BYTES
                     + largest)
            raise ConfigError(
                f"agent {share.device}: its memory budget of {budget / 1e6:.1f} MB can "
                f"neither load its 4-bit share resident ({share.peak_memory_bytes / 1e6:.1f}"
                f" MB at the loading peak: KV cache, activations, the kernels and room to "
                f"convert them) nor stream it as int8 blocks (at least {least / 1e6:.1f} MB:"
                " KV cache, activations and the largest fp32 block, which each block is "
                "converted from); raise the memory budget, shorten max_context, or deploy "
                "on more agents")


__all__ = [
    "Q4_BLOCK",
    "Q4_BYTES_PER_WEIGHT",
    "Q4_NOTE",
    "Q4_STREAM_NOTE",
    "check_q4_budgets",
    "fp32_block_bytes",
    "int8_block_bytes",
    "q4_memory_bytes",
    "q4_stream_residency",
    "q4_weight_bytes",
    "quantize_plan",
    "read_bps_of",
    "stream_note",
]
