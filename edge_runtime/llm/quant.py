"""4-bit weights through onnxruntime's `MatMulNBits` (block 32, int8 activations).

Why: decode is bandwidth-bound, so 4-bit weights move ~7× fewer bytes than fp32, and
onnxruntime's `MatMulNBits` with `accuracy_level=4` (int8 activations) is the CPU
kernel that turns that into speed (NOTES.md: 4.8× faster than fp32 on this CPU;
`accuracy_level=0` dequantises to fp32 and is no faster). The weights must be graph
initializers — fed as an input the kernel skips its prepacking and is ~50× slower —
so one small session is built per matrix when a share is loaded; hence 4-bit serves
resident shares only (a streaming window would rebuild sessions on every reload).

Several rows (a prompt): `MatMulNBits` with int8 activations costs one row's work per
row on a CPU without VNNI (AVX2 here: 0.89 / 1.72 / 3.12 / 42.6 ms for 1 / 4 / 8 / 128
rows of 2048 x 11264, pinned), because one row already runs at the core's arithmetic
limit. onnxruntime's `MatMulInteger` with int8 weights packed once by MLAS is a real GEMM
(1.42 / 1.71 / 2.33 / 18.3 ms) but reads 1 byte per weight instead of 0.56, so it loses
at one row. `Int8MatMul` is that kernel, and `RowRoute` sends to it the rows of the
sequences whose span in a step has at least `LONG_SPAN_ROWS` tokens (prefills): chosen
per sequence, never per step, so a sequence's numbers do not depend on what it is
batched with (both kernels compute each row on its own, the int8 one exactly).

Quantisation: symmetric per block of 32 input rows per output column, scale =
max|w| / 7, codes w/scale + 8 in 0..15 (the kernel's default zero point 8).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

log = logging.getLogger(__name__)

BLOCK = 32
#: A span this long or longer (a prefill) runs on the int8 GEMM when a twin exists:
#: from 4 rows `Int8MatMul` is as fast as `MatMulNBits`, from 8 clearly faster.
LONG_SPAN_ROWS = 4


def quantize_q4(w: np.ndarray, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Quantise `w` [K, N] (used as x @ w) to packed codes [N, K/block, block/2] and scales
    [N*K/block] (`block`: inputs per scale; shares use `BLOCK`, `bench kernels` compares
    others)."""
    k, n = w.shape
    if k % block:
        raise ValueError(f"K={k} is not a multiple of {block}")
    packed = np.empty((n, k // block, block // 2), dtype=np.uint8)
    scales = np.empty((n, k // block), dtype=np.float32)
    # a few MB of fp32 temporaries at a time, not several copies of the matrix: the
    # peak while a share converts is what decides whether a device can take it
    step = max(1, (1 << 20) // k)
    for c0 in range(0, n, step):
        c1 = min(n, c0 + step)
        blocks = np.ascontiguousarray(w[:, c0:c1].T, dtype=np.float32)
        blocks = blocks.reshape(c1 - c0, k // block, block)
        scale = np.abs(blocks).max(axis=2) / np.float32(7.0)
        scale[scale == 0] = np.float32(1.0)
        blocks /= scale[..., None]
        np.rint(blocks, out=blocks)
        blocks += 8
        np.clip(blocks, 0, 15, out=blocks)
        codes = blocks.astype(np.uint8)
        packed[c0:c1] = codes[..., 0::2] | (codes[..., 1::2] << 4)
        scales[c0:c1] = scale
    return packed, scales.ravel()


def dequantize_q4(packed: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The fp32 [K, N] matrix the codes stand for (for tests and error estimates)."""
    n, nb, half = packed.shape
    codes = np.empty((n, nb, 2 * half), dtype=np.float32)
    codes[..., 0::2] = packed & 0x0F
    codes[..., 1::2] = packed >> 4
    w = (codes - 8) * scales.reshape(n, nb, 1)
    out: np.ndarray = w.reshape(n, nb * 2 * half).T
    return out


def session_of(model: Any) -> Any:
    """A one-thread CPU session over an onnx ModelProto."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    # onnxruntime's Python session keeps the serialized model (as large as the 4-bit
    # weights themselves) only to rebuild itself on another provider; a CPU-only session
    # never does, so drop it (measured: four 4096 x 4096 kernels, 42 MB of codes, took
    # 132 MB resident with it and 90 MB without)
    session._model_bytes = None
    return session


def q4_node(w: np.ndarray, x: str, y: str, prefix: str, block: int = BLOCK
            ) -> tuple[Any, list[Any], int]:
    """A `MatMulNBits` node computing `y` = `x` @ `w` [K, N] from 4-bit codes, its two
    initializers (named with `prefix`, so several can share a graph) and their bytes."""
    from onnx import TensorProto, helper

    k, n = w.shape
    packed, scales = quantize_q4(w, block)
    node = helper.make_node("MatMulNBits", [x, prefix + "B", prefix + "S"], [y],
                            domain="com.microsoft", K=k, N=n, bits=4, block_size=block,
                            accuracy_level=4)
    initializers = [
        helper.make_tensor(prefix + "B", TensorProto.UINT8, list(packed.shape),
                           packed.tobytes(), raw=True),
        helper.make_tensor(prefix + "S", TensorProto.FLOAT, [scales.size], scales.tobytes(),
                           raw=True),
    ]
    return node, initializers, packed.nbytes + scales.nbytes


def q4_model(graph: Any) -> Any:
    """A model of `graph` with the opsets `MatMulNBits` needs."""
    from onnx import helper

    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)],
        # onnx 1.23 writes IR 14 by default, which onnxruntime < 1.32 refuses; IR 10 is
        # read by every onnxruntime since 1.18 (the oldest this project supports).
        ir_version=10,
    )


class RowRoute:
    """Which rows of the current step go to the int8 twins: those of long spans.

    The worker calls `begin` with every span's token count at the start of a step; a
    kernel then asks `long_rows(m)` for a matrix of m rows, which is either every token
    of the step (layers, and the LM head without `last_only`) or one row per span (the
    LM head with `last_only`): the two cannot be confused, since they have the same
    count only when every span has one token, and then no row is long.
    """

    def __init__(self, min_rows: int = LONG_SPAN_ROWS) -> None:
        self.min_rows = min_rows
        self._per_token: np.ndarray | None = None
        self._per_span: np.ndarray | None = None

    def begin(self, lengths: Sequence[int]) -> None:
        long = np.asarray([n >= self.min_rows for n in lengths], dtype=bool)
        if not long.any():
            self._per_token = self._per_span = None
            return
        self._per_span = long
        self._per_token = np.repeat(long, np.asarray(lengths, dtype=np.int64))

    def long_rows(self, m: int) -> np.ndarray | None:
        """Boolean mask of the m rows that are long, or None when none is."""
        for mask in (self._per_token, self._per_span):
            if mask is not None and mask.size == m:
                return mask
        return None


def by_rows(x: np.ndarray, long: np.ndarray | None, short_rows: Callable[[np.ndarray], Any],
            long_rows: Callable[[np.ndarray], Any], width: int) -> np.ndarray:
    """`long_rows` on the rows a `RowRoute` mask `long` marks, `short_rows` on the others,
    each row's result [width] in its place; one call when the rows are all alike."""
    if long is None or not long.any():
        short: np.ndarray = short_rows(x)
        return short
    if long.all():
        whole: np.ndarray = long_rows(x)
        return whole
    out = np.empty((x.shape[0], width), dtype=np.float32)
    out[long] = long_rows(x[long])
    out[~long] = short_rows(x[~long])
    return out


class Int8MatMul:
    """x [M, K] @ W [K, N] with W as per-column int8 codes in onnxruntime's
    `MatMulInteger` (packed once by MLAS), activations quantised per row to uint8.

    Each row gets its own scale (max |x| / 127, zero point 128) and the int32 sums are
    exact, so a row's result does not depend on the other rows of the call.
    """

    def __init__(self, w: np.ndarray) -> None:
        from onnx import TensorProto, helper

        k, n = w.shape
        codes, scale = int8_columns(np.asarray(w, dtype=np.float32))
        graph = helper.make_graph(
            [helper.make_node("MatMulInteger", ["x", "B", "zp"], ["y"])],
            "q8",
            [helper.make_tensor_value_info("x", TensorProto.UINT8, ["M", k])],
            [helper.make_tensor_value_info("y", TensorProto.INT32, ["M", n])],
            [
                helper.make_tensor("B", TensorProto.INT8, [k, n], codes.tobytes(), raw=True),
                helper.make_tensor("zp", TensorProto.UINT8, [], [128]),
            ],
        )
        del codes
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                  ir_version=10)  # read by every onnxruntime since 1.18
        self._session = session_of(model)
        self._scale = scale.astype(np.float32)
        self.nbytes = k * n + scale.nbytes
        self.shape = (k, n)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        codes, step = _rows_u8(x)
        return _scaled(self._session.run(None, {"x": codes})[0], step, self._scale)


def int8_columns(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column symmetric int8 codes [K, N] and fp32 scales [N] of `w` [K, N], a few
    MB of temporaries at a time."""
    scale = np.abs(w).max(axis=0) / np.float32(127.0)
    scale[scale == 0] = np.float32(1.0)
    codes = np.empty(w.shape, dtype=np.int8)
    step = max(1, (1 << 20) // max(1, w.shape[1]))
    for r in range(0, w.shape[0], step):
        part = w[r:r + step] / scale
        np.rint(part, out=part)
        np.clip(part, -127, 127, out=part)
        codes[r:r + step] = part
    return codes, scale.astype(np.float32)


@functools.cache
def _malloc_trim() -> Any:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def trim_heap() -> None:
    """Hand freed heap pages back to the OS (glibc's malloc_trim), where it exists.

    Converting a share frees an fp32 block and the kernels' build copies per block; glibc
    keeps such pages, so without this the loading peak grows by hundreds of MB (measured:
    1228 MiB peak for a share that serves in 632 MiB)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _rows_u8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row of x as uint8 codes (zero point 128) and its scale [M, 1]."""
    x = np.asarray(x, dtype=np.float32)
    step = np.abs(x).max(axis=1, keepdims=True) / np.float32(127.0)
    step[step == 0] = np.float32(1.0)
    codes = np.rint(x / step)
    codes += 128
    return codes.astype(np.uint8), step


def _scaled(acc: np.ndarray, step: np.ndarray, scale: np.ndarray) -> np.ndarray:
    out: np.ndarray = acc.astype(np.float32)
    out *= step
    out *= scale
    return out


class Int8Streamed:
    """x @ W for int8 weights that arrive at run time (a streamed block's views).

    `MatMulInteger` takes W as a graph input (MLAS packs it per call: 2.5 ms against
    1.4 ms prepacked for 2048 x 11264 at one row), so one session per matrix shape,
    built once and shared by every block of that shape, runs over whatever buffer the
    window just read. Rows are quantised as in `Int8MatMul`.
    """

    _sessions: ClassVar[dict[tuple[int, int], Any]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, codes: np.ndarray, scale: np.ndarray) -> None:
        self.codes, self.scale = codes, scale
        self.shape = (int(codes.shape[0]), int(codes.shape[1]))

    @classmethod
    def session(cls, k: int, n: int) -> Any:
        with cls._lock:
            found = cls._sessions.get((k, n))
            if found is None:
                from onnx import TensorProto, helper

                graph = helper.make_graph(
                    [helper.make_node("MatMulInteger", ["x", "B", "zp"], ["y"])], "q8s",
                    [helper.make_tensor_value_info("x", TensorProto.UINT8, ["M", k]),
                     helper.make_tensor_value_info("B", TensorProto.INT8, [k, n])],
                    [helper.make_tensor_value_info("y", TensorProto.INT32, ["M", n])],
                    [helper.make_tensor("zp", TensorProto.UINT8, [], [128])])
                found = cls._sessions[(k, n)] = session_of(helper.make_model(
                    graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10))
            return found

    def __call__(self, x: np.ndarray) -> np.ndarray:
        codes, step = _rows_u8(x)
        acc = self.session(*self.shape).run(None, {"x": codes, "B": self.codes})[0]
        return _scaled(acc, step, self.scale)


class Q4MatMul:
    """x [M, K] @ W [K, N] with W held as 4-bit codes inside an onnxruntime session.

    With a `route`, an `Int8MatMul` twin of W is built too and the route's long rows
    (prefills) go to it; the others stay on the 4-bit kernel.
    """

    def __init__(self, w: np.ndarray, route: RowRoute | None = None, block: int = BLOCK
                 ) -> None:
        from onnx import TensorProto, helper

        k, n = w.shape
        node, initializers, nbytes = q4_node(w, "x", "y", "", block)
        graph = helper.make_graph(
            [node],
            "q4",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", n])],
            initializers,
        )
        model = q4_model(graph)
        self._session = session_of(model)
        self.nbytes = nbytes
        self.shape = (k, n)
        self.route = route
        self.twin = None if route is None else Int8MatMul(w)

    @property
    def twin_bytes(self) -> int:
        """Memory the int8 twin holds (0 without one)."""
        return 0 if self.twin is None else self.twin.nbytes

    def _q4(self, x: np.ndarray) -> np.ndarray:
        out: np.ndarray = self._session.run(
            None, {"x": np.ascontiguousarray(x, np.float32)})[0]
        return out

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.twin is None or self.route is None:
            return self._q4(x)
        return by_rows(x, self.route.long_rows(x.shape[0]), self._q4, self.twin,
                       self.shape[1])


__all__ = [
    "BLOCK",
    "LONG_SPAN_ROWS",
    "Int8MatMul",
    "Int8Streamed",
    "Q4MatMul",
    "RowRoute",
    "by_rows",
    "dequantize_q4",
    "int8_columns",
    "q4_model",
    "q4_node",
    "quantize_q4",
    "session_of",
    "trim_heap",
]
