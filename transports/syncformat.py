"""Reduced-precision sync: the formats an allreduce's float32 activations may travel in.

Why: on a slow link a tensor-parallel token's time is mostly its allreduces' bytes, and
an activation needs far fewer than 32 bits to be useful (distributed-llama syncs in
8-bit blocks, "q80"). Opt-in per deployment (`deploy_llm(..., sync=...)`), because it
changes the logits; fp32 (the default) sends the exact bits.

- ``fp32``: nothing changes (4 bytes per value).
- ``bf16``: the upper 16 bits of each float32, rounded to nearest even (2 bytes).
- ``fp16``: IEEE half precision (2 bytes); values beyond ±65504 become ±inf, so it
  suits activations of a known small range only.
- ``q8``: blocks of `Q8_BLOCK` values, each as one float32 scale (max |x| / 127) and
  `Q8_BLOCK` int8 (≈ 1.1 bytes per value, 0.28 of fp32).

The codec is deterministic (same input bits, same output bits on every machine that
runs numpy), which is what lets the collectives give every member the same result
bits: a member that must agree with another decodes exactly what the other decodes.
Sums are always accumulated in float32; only what travels is reduced. Every wire
payload is a 1-D uint8 array.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from transports.cost import Matrix, Schedule, allreduce_schedule
from transports.errors import CollectiveError

SYNC_FORMATS = ("fp32", "bf16", "fp16", "q8")
"""The names `deploy_llm(sync=...)` and `CollectiveGroup(sync=...)` take."""

Q8_BLOCK = 32
"""Values per q8 scale, as distributed-llama's q80: one outlier coarsens only 32 values."""

_Q8_SCALE_BYTES = 4


def check_sync(sync: str) -> str:
    """`sync` if it names a format, else CollectiveError listing the formats."""
    if sync not in SYNC_FORMATS:
        raise CollectiveError(f"unknown sync format {sync!r}; use one of "
                              f"{', '.join(SYNC_FORMATS)}")
    return sync


def wire_nbytes(sync: str, count: int) -> int:
    """Bytes a tensor of `count` float32 values takes on the wire under `sync`."""
    if sync == "fp32":
        return 4 * count
    if sync in ("bf16", "fp16"):
        return 2 * count
    if sync == "q8":
        return _Q8_SCALE_BYTES * -(-count // Q8_BLOCK) + count
    raise CollectiveError(f"unknown sync format {sync!r}")


def wire_fraction(sync: str) -> float:
    """Wire bytes per float32 byte (for the cost model: a payload of P fp32 bytes
    travels as about P × this)."""
    return wire_nbytes(sync, 1 << 20) / (4 << 20)


def sync_schedule(payloads: Sequence[int], latency_s: Matrix, bandwidth: Matrix,
                  overhead_s: float, sync: str) -> Schedule:
    """`transports.cost.allreduce_schedule` chosen on the bytes each fp32 payload takes
    on the wire under `sync` (a q8 payload is priced at 0.28 of its fp32 bytes), its
    bounds given back as fp32 payload sizes, which is what a member `pick`s with."""
    check_sync(sync)
    sizes = sorted(set(int(p) for p in payloads))
    wire = {size: wire_nbytes(sync, -(-size // 4)) for size in sizes}
    fp32_of = {w: size for size, w in wire.items()}  # wire_nbytes grows with the size
    schedule = allreduce_schedule(list(wire.values()), latency_s, bandwidth, overhead_s)
    return tuple((fp32_of[upto], name) for upto, name in schedule)


def encode(x: np.ndarray, sync: str) -> np.ndarray:
    """The wire payload (1-D uint8) of the float32 values of `x` under `sync`
    (not "fp32": that travels as it is)."""
    flat = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    if sync == "bf16":
        bits = flat.view(np.uint32)
        # round to nearest even: add 0x7FFF plus the lowest kept bit, keep the top half
        rounded = (bits + (np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1)))) >> 16
        return rounded.astype(np.uint16).view(np.uint8)
    if sync == "fp16":
        with np.errstate(over="ignore"):
            return flat.astype(np.float16).view(np.uint8)
    if sync == "q8":
        return _encode_q8(flat)
    raise CollectiveError(f"sync format {sync!r} has no wire encoding")


def _encode_q8(flat: np.ndarray) -> np.ndarray:
    count = flat.size
    blocks = -(-count // Q8_BLOCK)
    out = np.empty(_Q8_SCALE_BYTES * blocks + count, np.uint8)
    scales = out[:_Q8_SCALE_BYTES * blocks].view(np.float32)
    values = out[_Q8_SCALE_BYTES * blocks:].view(np.int8)
    full = count // Q8_BLOCK
    head = full * Q8_BLOCK
    _q8_blocks(flat[:head].reshape(full, Q8_BLOCK), scales[:full],
               values[:head].reshape(full, Q8_BLOCK))
    if head < count:
        _q8_blocks(flat[head:].reshape(1, -1), scales[full:], values[head:].reshape(1, -1))
    return out


def _q8_blocks(grid: np.ndarray, scales: np.ndarray, out: np.ndarray) -> None:
    """Scales (max |x| / 127 per row) and int8 values of each row of `grid`; a row of
    zeros gets scale 0 and values 0. Few numpy calls: this runs on every message."""
    amax = np.maximum(grid.max(axis=1), -grid.min(axis=1))
    np.multiply(amax, np.float32(1 / 127), out=scales)
    with np.errstate(divide="ignore", invalid="ignore"):  # NaN in, garbage out
        inverse = np.float32(127) / amax
        inverse[amax == 0] = 0
        scaled = grid * inverse[:, None]
        np.rint(scaled, out=scaled)
        out[...] = scaled  # |scaled| <= 127 by construction (the row's max maps to 127)


def decode(payload: np.ndarray, sync: str, count: int) -> np.ndarray:
    """The float32 values (1-D, a fresh array) of a wire payload; CollectiveError when
    its size does not fit `count` values under `sync`."""
    data = np.asarray(payload)
    expected = wire_nbytes(sync, count)
    if data.dtype != np.uint8 or data.ndim != 1 or data.size != expected:
        raise CollectiveError(f"a {sync} payload of {count} values is {expected} bytes, got "
                              f"{data.dtype}{list(data.shape)}")
    if sync == "bf16":
        return (data.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    if sync == "fp16":
        return data.view(np.float16).astype(np.float32)
    if sync == "q8":
        blocks = -(-count // Q8_BLOCK)
        scales = data[:_Q8_SCALE_BYTES * blocks].view(np.float32)
        values = data[_Q8_SCALE_BYTES * blocks:].view(np.int8)
        out = np.empty(count, np.float32)
        full = count // Q8_BLOCK
        head = full * Q8_BLOCK
        with np.errstate(all="ignore"):  # a peer's scale may be inf/NaN: garbage in
            np.multiply(values[:head].reshape(full, Q8_BLOCK), scales[:full, None],
                        out=out[:head].reshape(full, Q8_BLOCK))
            if head < count:
                np.multiply(values[head:], scales[full], out=out[head:])
        return out
    raise CollectiveError(f"sync format {sync!r} has no wire encoding")


def round_trip(x: np.ndarray, sync: str) -> np.ndarray:
    """What a receiver of `x` under `sync` holds (float32, `x`'s shape)."""
    flat = np.asarray(x, dtype=np.float32).reshape(-1)
    return decode(encode(flat, sync), sync, flat.size).reshape(np.shape(x))


__all__ = ["Q8_BLOCK", "SYNC_FORMATS", "check_sync", "decode", "encode", "round_trip",
           "sync_schedule", "wire_fraction", "wire_nbytes"]
