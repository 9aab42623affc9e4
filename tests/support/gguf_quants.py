"""GGUF blocks for test files: gguf-py quantizes Q8_0/Q4_0/BF16; the K-quants (Q4_K,
Q5_K, Q6_K), which gguf-py can only dequantize, are packed here.

The K-quant packers are simple (min/max per sub-block, no search) with the bit layouts
of llama.cpp's ggml-common.h block_q4_K / block_q5_K / block_q6_K: valid blocks are what
the tests need, since the reader and transformers dequantize the same bytes.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _f16(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    half = x.astype(np.float16)
    return half, half.astype(np.float32)


def _scale_min(x: np.ndarray, levels: int) -> tuple[np.ndarray, ...]:
    sub = x.reshape(x.shape[0], 8, 32)
    lo = np.minimum(sub.min(-1), 0.0)
    scale = (sub.max(-1) - lo) / levels
    mins = -lo
    d16, d = _f16(scale.max(-1) / 63)
    m16, dm = _f16(mins.max(-1) / 63)
    sc = np.clip(np.rint(np.divide(scale, d[:, None], out=np.zeros_like(scale),
                                   where=d[:, None] > 0)), 0, 63).astype(np.uint8)
    mq = np.clip(np.rint(np.divide(mins, dm[:, None], out=np.zeros_like(mins),
                                   where=dm[:, None] > 0)), 0, 63).astype(np.uint8)
    eff = (d[:, None] * sc)[..., None]
    q = np.divide(sub + (dm[:, None] * mq)[..., None], eff, out=np.zeros_like(sub),
                  where=eff > 0)
    q = np.clip(np.rint(q), 0, levels).astype(np.uint8).reshape(x.shape[0], 256)
    packed = np.concatenate([(sc[:, :4] & 63) | ((sc[:, 4:] >> 4) << 6),
                             (mq[:, :4] & 63) | ((mq[:, 4:] >> 4) << 6),
                             (sc[:, 4:] & 0xF) | ((mq[:, 4:] & 0xF) << 4)], axis=1)
    return d16, m16, packed.astype(np.uint8), q


def _nibbles(q: np.ndarray) -> np.ndarray:
    chunk = (q & 0xF).reshape(q.shape[0], 4, 2, 32)
    return (chunk[:, :, 0] | (chunk[:, :, 1] << 4)).reshape(q.shape[0], 128).astype(np.uint8)


def _q4_k(x: np.ndarray) -> np.ndarray:
    d, dm, scales, q = _scale_min(x, 15)
    return np.concatenate([d.view(np.uint8).reshape(-1, 2), dm.view(np.uint8).reshape(-1, 2),
                           scales, _nibbles(q)], axis=1)


def _q5_k(x: np.ndarray) -> np.ndarray:
    d, dm, scales, q = _scale_min(x, 31)
    high = ((q >> 4) & 1).reshape(q.shape[0], 8, 32)
    qh = np.zeros((q.shape[0], 32), dtype=np.uint8)
    for i in range(8):
        qh |= (high[:, i] << i).astype(np.uint8)
    return np.concatenate([d.view(np.uint8).reshape(-1, 2), dm.view(np.uint8).reshape(-1, 2),
                           scales, qh, _nibbles(q)], axis=1)


def _q6_k(x: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    sub = x.reshape(n, 16, 16)
    s = np.abs(sub).max(-1) / 31
    d16, d = _f16(s.max(-1) / 127)
    sc = np.clip(np.rint(np.divide(s, d[:, None], out=np.zeros_like(s), where=d[:, None] > 0)),
                 -128, 127).astype(np.int8)
    eff = (d[:, None] * sc)[..., None]
    q = np.divide(sub, eff, out=np.zeros_like(sub), where=eff != 0)
    u = (np.clip(np.rint(q), -32, 31) + 32).astype(np.uint8).reshape(n, 2, 128)
    ql = (u[:, :, :64] & 0xF) | ((u[:, :, 64:] & 0xF) << 4)
    parts = u.reshape(n, 2, 4, 32)
    qh = np.zeros((n, 2, 32), dtype=np.uint8)
    for t in range(4):
        qh |= (((parts[:, :, t] >> 4) & 3) << (2 * t)).astype(np.uint8)
    return np.concatenate([ql.reshape(n, 128), qh.reshape(n, 64), sc.view(np.uint8),
                           d16.view(np.uint8).reshape(-1, 2)], axis=1)


_K_PACKERS = {"Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k}


def encode(w: np.ndarray, qtype: str) -> tuple[np.ndarray, Any]:
    """(data, raw_dtype) for GGUFWriter.add_tensor: `w` [rows, cols] in type `qtype`."""
    from gguf import GGMLQuantizationType as T
    from gguf.quants import quantize

    w = np.ascontiguousarray(w, dtype=np.float32)
    if qtype == "F32":
        return w, None
    if qtype == "F16":
        return w.astype(np.float16), None
    kind = T[qtype]
    if qtype in _K_PACKERS:
        rows = w.shape[0]
        blocks = _K_PACKERS[qtype](w.reshape(-1, 256))
        return blocks.reshape(rows, -1), kind
    return quantize(w, kind), kind


def encode_any(w: np.ndarray, qtype: str) -> tuple[np.ndarray, Any]:
    """`encode`, or zero blocks of a type nothing here can quantize."""
    from gguf import GGML_QUANT_SIZES
    from gguf import GGMLQuantizationType as T

    try:
        return encode(w, qtype)
    except NotImplementedError:
        block, size = GGML_QUANT_SIZES[T[qtype]]
        return np.zeros((w.shape[0], w.shape[1] // block * size), dtype=np.uint8), T[qtype]


def dequantized(w: np.ndarray, qtype: str) -> np.ndarray:
    """The values a reader gets back from `encode(w, qtype)`."""
    from gguf import GGMLQuantizationType as T
    from gguf.quants import dequantize

    data, kind = encode(w, qtype)
    if kind is None:
        return np.asarray(data, dtype=np.float32)
    return np.asarray(dequantize(data, T[qtype]), dtype=np.float32)
