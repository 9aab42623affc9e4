"""4-bit weights through onnxruntime's `MatMulNBits` (block 32, int8 activations).

Why: decode is bandwidth-bound, so 4-bit weights move ~7× fewer bytes than fp32, and
onnxruntime's `MatMulNBits` with `accuracy_level=4` (int8 activations) is the CPU
kernel that turns that into speed (NOTES.md: 4.8× faster than fp32 on this CPU;
`accuracy_level=0` dequantises to fp32 and is no faster). The weights must be graph
initializers — fed as an input the kernel skips its prepacking and is ~50× slower —
so one small session is built per matrix when a share is loaded; hence 4-bit serves
resident shares only (a streaming window would rebuild sessions on every reload).

Quantisation: symmetric per block of 32 input rows per output column, scale =
max|w| / 7, codes w/scale + 8 in 0..15 (the kernel's default zero point 8).
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

BLOCK = 32


def quantize_q4(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quantise `w` [K, N] (used as x @ w) to packed codes [N, K/32, 16] and scales [N*K/32]."""
    k, n = w.shape
    if k % BLOCK:
        raise ValueError(f"K={k} is not a multiple of {BLOCK}")
    blocks = np.ascontiguousarray(w.T, dtype=np.float32).reshape(n, k // BLOCK, BLOCK)
    scale = np.abs(blocks).max(axis=2) / np.float32(7.0)
    scale[scale == 0] = np.float32(1.0)
    codes = np.clip(np.rint(blocks / scale[..., None]) + 8, 0, 15).astype(np.uint8)
    packed = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return np.ascontiguousarray(packed), scale.astype(np.float32).ravel()


def dequantize_q4(packed: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The fp32 [K, N] matrix the codes stand for (for tests and error estimates)."""
    n, nb, half = packed.shape
    codes = np.empty((n, nb, 2 * half), dtype=np.float32)
    codes[..., 0::2] = packed & 0x0F
    codes[..., 1::2] = packed >> 4
    w = (codes - 8) * scales.reshape(n, nb, 1)
    out: np.ndarray = w.reshape(n, nb * 2 * half).T
    return out


class Q4MatMul:
    """x [M, K] @ W [K, N] with W held as 4-bit codes inside an onnxruntime session."""

    def __init__(self, w: np.ndarray) -> None:
        import onnxruntime as ort
        from onnx import TensorProto, helper

        k, n = w.shape
        packed, scales = quantize_q4(w)
        node = helper.make_node(
            "MatMulNBits",
            ["x", "B", "S"],
            ["y"],
            domain="com.microsoft",
            K=k,
            N=n,
            bits=4,
            block_size=BLOCK,
            accuracy_level=4,
        )
        graph = helper.make_graph(
            [node],
            "q4",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", n])],
            [
                helper.make_tensor(
                    "B", TensorProto.UINT8, list(packed.shape), packed.tobytes(), raw=True
                ),
                helper.make_tensor(
                    "S", TensorProto.FLOAT, [scales.size], scales.tobytes(), raw=True
                ),
            ],
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
            # onnx 1.23 writes IR 14 by default, which onnxruntime < 1.32 refuses; IR 10 is
            # read by every onnxruntime since 1.18 (the oldest this project supports).
            ir_version=10,
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        self.nbytes = packed.nbytes + scales.nbytes
        self.shape = (k, n)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out: np.ndarray = self._session.run(None, {"x": np.ascontiguousarray(x, np.float32)})[0]
        return out


__all__ = ["BLOCK", "Q4MatMul", "dequantize_q4", "quantize_q4"]
