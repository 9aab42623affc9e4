"""Fused 4-bit segments: a layer's norm, projections and element-wise work in one graph.

Why: at 8 agents a 4-bit share's step is 26 small `MatMulNBits` calls with numpy between
them, and on a contended host the numpy part (norms, RoPE, the gated activation: a few
µs of Python and dispatch per operation, ~20 operations per layer) was about a fifth of
the agent's compute (docs/BENCHMARKS.md, issue 12). Two onnxruntime graphs per layer do
the same work in C++ with one call each:

- `Q4AttentionIn`: RMSNorm → qkv `MatMulNBits` (+ bias) → RoPE of q and k, from the
  residual stream to roped q, k and v, ready for the KV cache and attention (which stay
  per sequence in numpy, `kernels.attention`, since batched sequences attend apart);
- `Q4FeedForward`: RMSNorm → gate/up `MatMulNBits` → silu(gate) · up → down
  `MatMulNBits`, from the residual stream to this share's partial MLP output.

Both work row by row, so a sequence's numbers do not depend on what it is batched with.
The weights live in these graphs alone (not also in per-matrix kernels), so a fused
share holds no more than an unfused one. With a batching share's `RowRoute`, the long
rows (prefills) go through the same steps in numpy with the int8 twins, as the
per-matrix kernels would send them.

Only models these graphs compute exactly are fused (`fusable`): dense SiLU MLPs and no
per-head q/k norms; every other model keeps the per-matrix kernels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_runtime.errors import ConfigError
from edge_runtime.llm.config import LlmConfig
from edge_runtime.llm.kernels import rms_norm, rotate, silu_mul, split_qkv
from edge_runtime.llm.quant import (
    BLOCK,
    Int8MatMul,
    RowRoute,
    by_rows,
    q4_model,
    q4_node,
    session_of,
)

log = logging.getLogger(__name__)

F32 = np.float32


@dataclass(frozen=True)
class SegmentShape:
    """What a fused segment needs of the model beyond its weights: this share's query
    and KV heads, the head width and the norms' epsilon."""

    q_heads: int
    kv_heads: int
    head_dim: int
    eps: float


def fusable(config: LlmConfig) -> bool:
    """Whether a 4-bit share of this model can run fused segments: a dense SiLU MLP
    (no experts), no per-head q/k norms before RoPE."""
    return not config.experts and config.hidden_act == "silu" and not config.qk_norm


def _norm_nodes(x: str, weight: str, eps: str, out: str) -> list[Any]:
    """RMSNorm as `kernels.rms_norm` computes it: x · 1/sqrt(mean(x²) + eps) · weight."""
    from onnx import helper

    p = out + "_"
    return [
        helper.make_node("Mul", [x, x], [p + "sq"]),
        helper.make_node("ReduceMean", [p + "sq", "axis_last"], [p + "ms"], keepdims=1),
        helper.make_node("Add", [p + "ms", eps], [p + "mse"]),
        helper.make_node("Sqrt", [p + "mse"], [p + "rt"]),
        helper.make_node("Reciprocal", [p + "rt"], [p + "inv"]),
        helper.make_node("Mul", [x, p + "inv"], [p + "scaled"]),
        helper.make_node("Mul", [p + "scaled", weight], [out]),
    ]


def _common_initializers(norm: np.ndarray, eps: float) -> list[Any]:
    from onnx import TensorProto, helper

    return [
        helper.make_tensor("axis_last", TensorProto.INT64, [1], [-1]),
        helper.make_tensor("eps", TensorProto.FLOAT, [], [eps]),
        helper.make_tensor("norm", TensorProto.FLOAT, [norm.size],
                           np.ascontiguousarray(norm, F32).tobytes(), raw=True),
    ]


class Q4AttentionIn:
    """Residual rows x [M, hidden] → (q [M, q_heads, d], k [M, kv_heads, d], v), q and k
    rotated by each row's cos/sin [M, d]."""

    def __init__(self, norm: np.ndarray, wqkv: np.ndarray, bias: np.ndarray | None,
                 shape: SegmentShape, route: RowRoute | None) -> None:
        from onnx import TensorProto, helper

        hidden, width = wqkv.shape
        nq, nkv, d = shape.q_heads, shape.kv_heads, shape.head_dim
        if width != (nq + 2 * nkv) * d:
            raise ConfigError(f"qkv width {width} is not ({nq} + 2·{nkv}) heads of {d}")
        # copies: the arrays may be views of a block buffer that is freed after loading
        self.shape, self._norm = shape, np.array(norm, F32)
        self._bias = None if bias is None else np.array(bias, F32)
        matmul, initializers, self.nbytes = q4_node(wqkv, "normed", "qkv0", "wqkv")
        nodes = [*_norm_nodes("x", "norm", "eps", "normed"), matmul]
        qkv = "qkv0"
        initializers += _common_initializers(norm, shape.eps)
        if bias is not None:
            nodes.append(helper.make_node("Add", ["qkv0", "bqkv"], ["qkv"]))
            initializers.append(helper.make_tensor("bqkv", TensorProto.FLOAT, [bias.size],
                                                   bias.astype(F32).tobytes(), raw=True))
            qkv = "qkv"
        initializers += [
            helper.make_tensor("split_qkv", TensorProto.INT64, [3], [nq * d, nkv * d, nkv * d]),
            helper.make_tensor("split_half", TensorProto.INT64, [2], [d // 2, d // 2]),
            helper.make_tensor("heads_q", TensorProto.INT64, [3], [0, nq, d]),
            helper.make_tensor("heads_kv", TensorProto.INT64, [3], [0, nkv, d]),
            helper.make_tensor("axis_1", TensorProto.INT64, [1], [1]),
        ]
        nodes += [
            helper.make_node("Split", [qkv, "split_qkv"], ["q2", "k2", "v2"], axis=1),
            helper.make_node("Reshape", ["q2", "heads_q"], ["q3"]),
            helper.make_node("Reshape", ["k2", "heads_kv"], ["k3"]),
            helper.make_node("Reshape", ["v2", "heads_kv"], ["v"]),
            helper.make_node("Unsqueeze", ["cos", "axis_1"], ["cos3"]),
            helper.make_node("Unsqueeze", ["sin", "axis_1"], ["sin3"]),
        ]
        for name in ("q", "k"):  # x · cos + rotate_half(x) · sin, as `kernels.rotate`
            nodes += [
                helper.make_node("Split", [name + "3", "split_half"],
                                 [name + "_lo", name + "_hi"], axis=-1),
                helper.make_node("Neg", [name + "_hi"], [name + "_neg"]),
                helper.make_node("Concat", [name + "_neg", name + "_lo"], [name + "_rot"],
                                 axis=-1),
                helper.make_node("Mul", [name + "3", "cos3"], [name + "_c"]),
                helper.make_node("Mul", [name + "_rot", "sin3"], [name + "_s"]),
                helper.make_node("Add", [name + "_c", name + "_s"], [name]),
            ]
        rows = helper.make_tensor_value_info
        graph = helper.make_graph(
            nodes, "q4_attention_in",
            [rows("x", TensorProto.FLOAT, ["M", hidden]),
             rows("cos", TensorProto.FLOAT, ["M", d]), rows("sin", TensorProto.FLOAT, ["M", d])],
            [rows("q", TensorProto.FLOAT, ["M", nq, d]),
             rows("k", TensorProto.FLOAT, ["M", nkv, d]),
             rows("v", TensorProto.FLOAT, ["M", nkv, d])],
            initializers)
        self._session = session_of(q4_model(graph))
        del graph, initializers  # protobuf copies of the codes: not kept while twins build
        self.route = route
        self.twin = None if route is None else Int8MatMul(wqkv)

    @property
    def twin_bytes(self) -> int:
        """Memory the int8 twin (prefill rows of a batching share) holds."""
        return 0 if self.twin is None else self.twin.nbytes

    def __call__(self, x: np.ndarray, cos: np.ndarray, sin: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        long = None if self.twin is None or self.route is None else \
            self.route.long_rows(x.shape[0])
        if long is None:
            return self._fused(x, cos, sin)
        s = self.shape
        q = np.empty((x.shape[0], s.q_heads, s.head_dim), F32)
        k = np.empty((x.shape[0], s.kv_heads, s.head_dim), F32)
        v = np.empty_like(k)
        q[long], k[long], v[long] = self._twin(x[long], cos[long], sin[long])
        if not long.all():
            short = ~long
            q[short], k[short], v[short] = self._fused(x[short], cos[short], sin[short])
        return q, k, v

    def _fused(self, x: np.ndarray, cos: np.ndarray, sin: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        q, k, v = self._session.run(None, {"x": np.ascontiguousarray(x, F32),
                                           "cos": np.ascontiguousarray(cos, F32),
                                           "sin": np.ascontiguousarray(sin, F32)})
        return q, k, v

    def _twin(self, x: np.ndarray, cos: np.ndarray, sin: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The same steps in numpy with the int8 twin (long rows)."""
        assert self.twin is not None
        s = self.shape
        qkv = self.twin(rms_norm(x, self._norm, s.eps))
        if self._bias is not None:
            qkv += self._bias
        q, k, v = split_qkv(qkv, s.q_heads, s.kv_heads, s.head_dim)
        return rotate(q, cos, sin), rotate(k, cos, sin), v


class Q4FeedForward:
    """Residual rows x [M, hidden] → this share's partial MLP output [M, hidden]."""

    def __init__(self, norm: np.ndarray, wgu: np.ndarray, wdown: np.ndarray, eps: float,
                 route: RowRoute | None) -> None:
        from onnx import TensorProto, helper

        hidden, width = wgu.shape
        cols = width // 2
        gate_up, initializers, gu_bytes = q4_node(wgu, "normed", "gu", "wgu")
        down, down_init, down_bytes = q4_node(wdown, "act", "y", "wdown")
        self.nbytes = gu_bytes + down_bytes
        self._norm, self._eps = np.array(norm, F32), eps
        initializers += down_init + _common_initializers(norm, eps)
        initializers.append(helper.make_tensor("split_gu", TensorProto.INT64, [2], [cols, cols]))
        nodes = [
            *_norm_nodes("x", "norm", "eps", "normed"), gate_up,
            helper.make_node("Split", ["gu", "split_gu"], ["gate", "up"], axis=1),
            helper.make_node("Sigmoid", ["gate"], ["sig"]),
            helper.make_node("Mul", ["gate", "sig"], ["silu"]),
            helper.make_node("Mul", ["silu", "up"], ["act"]),
            down,
        ]
        rows = helper.make_tensor_value_info
        graph = helper.make_graph(nodes, "q4_feed_forward",
                                  [rows("x", TensorProto.FLOAT, ["M", hidden])],
                                  [rows("y", TensorProto.FLOAT, ["M", hidden])], initializers)
        self._session = session_of(q4_model(graph))
        del graph, initializers  # protobuf copies of the codes: not kept while twins build
        self.route = route
        self.twins = None if route is None else (Int8MatMul(wgu), Int8MatMul(wdown))

    @property
    def twin_bytes(self) -> int:
        """Memory the int8 twins (prefill rows of a batching share) hold."""
        return 0 if self.twins is None else sum(t.nbytes for t in self.twins)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.twins is None or self.route is None:
            return self._fused(x)
        return by_rows(x, self.route.long_rows(x.shape[0]), self._fused, self._twin,
                       x.shape[1])

    def _fused(self, x: np.ndarray) -> np.ndarray:
        out: np.ndarray = self._session.run(None, {"x": np.ascontiguousarray(x, F32)})[0]
        return out

    def _twin(self, x: np.ndarray) -> np.ndarray:
        """The same steps in numpy with the int8 twins (long rows)."""
        assert self.twins is not None
        gate_up, down = self.twins
        gu = gate_up(rms_norm(x, self._norm, self._eps))
        cols = gu.shape[1] // 2
        return down(silu_mul(gu[:, :cols], gu[:, cols:]))


def fuse_block(arrays: dict[str, np.ndarray], shape: SegmentShape,
               route: RowRoute | None) -> dict[str, Any] | None:
    """A block's weights with its segment fused, or None when it has none to fuse:
    an attention block's norm, qkv (and bias) become "attention_in"; an MLP block's norm,
    gate/up and down become "feed_forward". The rest (o_proj, the LM head) stays, and so
    does a block whose matrices are not in whole 4-bit blocks (it keeps the per-matrix
    rule: such a matrix stays fp32)."""
    def quantizable(*names: str) -> bool:  # `MatMulNBits` needs K in whole blocks
        return all(arrays[n].ndim == 2 and arrays[n].shape[0] % BLOCK == 0 for n in names)

    if "wqkv_t" in arrays and "norm" in arrays and quantizable("wqkv_t"):
        rest = {n: a for n, a in arrays.items() if n not in ("wqkv_t", "bqkv")}
        fused = Q4AttentionIn(arrays["norm"], arrays["wqkv_t"], arrays.get("bqkv"), shape, route)
        return {**rest, "attention_in": fused}
    if {"wgu_t", "wdown_t", "norm"} <= arrays.keys() and "router" not in arrays and \
            quantizable("wgu_t", "wdown_t"):
        rest = {n: a for n, a in arrays.items() if n not in ("wgu_t", "wdown_t")}
        mlp = Q4FeedForward(arrays["norm"], arrays["wgu_t"], arrays["wdown_t"], shape.eps, route)
        return {**rest, "feed_forward": mlp}
    return None


__all__ = ["Q4AttentionIn", "Q4FeedForward", "SegmentShape", "fusable", "fuse_block"]
