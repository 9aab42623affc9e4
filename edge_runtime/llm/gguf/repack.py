"""GGUF Q4_0 blocks as the engine's 4-bit `MatMulNBits` codes, without loss.

Why this exists: `quantize="q4"` re-quantizes fp32 weights (symmetric, block 32 along
the input dimension, scale = max|w|/7, zero point 8). A Q4_0 block is the same scheme
— 32 input elements, one scale `d`, codes 0..15 with zero point 8 — but llama.cpp's
quantizer picks `d = -max/8` so codes span -8..7, and its nibbles are ordered by half
(element j and j+16 share a byte) where `MatMulNBits` pairs neighbours (2i, 2i+1).
Dequantizing and re-quantizing therefore loses accuracy (the engine's scale is 8/7 of
`d` and codes are rounded again: measured in tests/unit/llm/test_gguf_q4.py), while this
re-pack is exact: only nibbles move and the f16 scale widens to f32. Hooking it into
the 4-bit path needs `Q4MatMul` to accept pre-packed codes (edge_runtime/llm/quant.py).
"""

from __future__ import annotations

import numpy as np

Q4_0_BLOCK = 32
Q4_0_BYTES = 18  # f16 scale + 16 bytes of nibbles


def q4_0_to_matmulnbits(blocks: np.ndarray, rows: int, cols: int
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Q4_0 data of a [rows, cols] GGUF matrix (rows = outputs) → (packed [rows, cols/32,
    16] uint8, scales [rows * cols/32] float32), the layout `quantize_q4` returns for the
    matrix used as `x @ w.T`; `dequantize_q4` of it equals the GGUF values exactly."""
    if cols % Q4_0_BLOCK:
        raise ValueError(f"cols={cols} is not a multiple of {Q4_0_BLOCK}")
    nb = cols // Q4_0_BLOCK
    raw = np.ascontiguousarray(blocks, dtype=np.uint8).reshape(rows, nb, Q4_0_BYTES)
    scales = raw[..., :2].copy().view(np.float16).astype(np.float32).reshape(rows * nb)
    qs = raw[..., 2:]
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)  # element order 0..31
    packed = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)
    return np.ascontiguousarray(packed), scales


__all__ = ["Q4_0_BLOCK", "q4_0_to_matmulnbits"]
