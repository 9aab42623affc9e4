"""FLOPs of one ONNX node from its input and output shapes.

Why a table of formulas rather than profiling: planning must be pure and fast, and
the planner only needs relative costs that a per-op-class efficiency (see
`partitioner.cost`) turns into seconds. A multiply-add counts as 2 FLOPs.

Op classes: "matmul" (MatMul, Gemm, attention-shaped batched MatMuls, Einsum),
"conv" (Conv incl. grouped/depthwise, ConvTranspose), "elementwise" (activations,
arithmetic, normalisation, pooling, reductions), "movement" (reshape, transpose,
gather, concat … no arithmetic, 0 FLOPs), "control" (If/Loop/Scan, whose bodies are
counted recursively by `partitioner.graph`), "other".
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

log = logging.getLogger(__name__)

Shape = tuple[int, ...] | None

MATMUL_OPS = frozenset(
    {"MatMul", "Gemm", "MatMulInteger", "QLinearMatMul", "FusedMatMul", "Einsum"}
)
CONV_OPS = frozenset({"Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "FusedConv"})
MOVEMENT_OPS = frozenset(
    {
        "Reshape",
        "Transpose",
        "Flatten",
        "Squeeze",
        "Unsqueeze",
        "Concat",
        "Split",
        "Slice",
        "Gather",
        "GatherElements",
        "GatherND",
        "Shape",
        "Size",
        "Identity",
        "Expand",
        "Tile",
        "Pad",
        "Cast",
        "Constant",
        "ConstantOfShape",
        "Range",
        "DepthToSpace",
        "SpaceToDepth",
        "ScatterND",
        "ScatterElements",
        "NonZero",
        "Dropout",
        "CastLike",
        "EyeLike",
    }
)
CONTROL_OPS = frozenset({"If", "Loop", "Scan"})
# Per output element, what an elementwise-class op costs (approximate; exp/log ≈ a few FLOPs).
_ELEMENTWISE_COST = {
    "Softmax": 5.0,
    "LogSoftmax": 5.0,
    "LayerNormalization": 8.0,
    "BatchNormalization": 2.0,
    "InstanceNormalization": 8.0,
    "GroupNormalization": 8.0,
    "Gelu": 8.0,
    "Erf": 4.0,
    "Sigmoid": 4.0,
    "Tanh": 4.0,
    "Exp": 4.0,
    "Log": 4.0,
    "HardSigmoid": 3.0,
    "HardSwish": 4.0,
    "Swish": 5.0,
    "SkipLayerNormalization": 9.0,
    "SimplifiedLayerNormalization": 6.0,
    "Resize": 4.0,
    "Upsample": 4.0,
    "Sqrt": 2.0,
    "Pow": 4.0,
    "Div": 1.0,
    "Clip": 1.0,
}
_POOL_OPS = frozenset({"MaxPool", "AveragePool", "LpPool"})
_GLOBAL_POOL_OPS = frozenset({"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"})
_REDUCE_PREFIX = ("Reduce", "ArgMax", "ArgMin")


def numel(shape: Shape) -> int:
    """Element count, 0 for an unknown shape."""
    if shape is None:
        return 0
    return int(math.prod(shape))


def op_class(op_type: str) -> str:
    if op_type in MATMUL_OPS:
        return "matmul"
    if op_type in CONV_OPS:
        return "conv"
    if op_type in MOVEMENT_OPS:
        return "movement"
    if op_type in CONTROL_OPS:
        return "control"
    return "elementwise"


def _matmul_flops(a: Shape, b: Shape, out: Shape) -> float:
    """2·K per output element; broadcasting batch dims (attention-shaped) handled via `out`."""
    if a is None or out is None:
        return 0.0
    k = a[-1] if len(a) >= 1 else 1
    return 2.0 * k * numel(out)


def _gemm_flops(a: Shape, out: Shape, trans_a: int) -> float:
    if a is None or out is None or len(a) != 2:
        return 0.0
    k = a[0] if trans_a else a[1]
    return 2.0 * k * numel(out) + numel(out)  # + bias add


def _conv_flops(weight: Shape, out: Shape, has_bias: bool) -> float:
    """2 · (C_in / group) · prod(kernel) per output element: the weight's dims give both.

    The weight of Conv is [C_out, C_in/group, k...], so grouped and depthwise convs
    come out right without reading the `group` attribute.
    """
    if weight is None or out is None or len(weight) < 2:
        return 0.0
    per_output = math.prod(weight[1:])
    return 2.0 * per_output * numel(out) + (numel(out) if has_bias else 0)


def _conv_transpose_flops(x: Shape, weight: Shape, group: int) -> float:
    """Each input element scatters into C_out/group · prod(kernel) outputs."""
    if x is None or weight is None or len(weight) < 2:
        return 0.0
    del group  # the weight [C_in, C_out/group, k...] already holds the per-group fan-out
    return 2.0 * numel(x) * weight[1] * math.prod(weight[2:])


def node_flops(
    op_type: str,
    input_shapes: Sequence[Shape],
    output_shapes: Sequence[Shape],
    attributes: Mapping[str, Any],
) -> float:
    """FLOPs of one node; unknown shapes count as 0 (the caller logs how many)."""
    first_in = input_shapes[0] if input_shapes else None
    first_out = output_shapes[0] if output_shapes else None
    if op_type in ("MatMul", "MatMulInteger", "FusedMatMul", "QLinearMatMul"):
        b = input_shapes[3] if op_type == "QLinearMatMul" and len(input_shapes) > 3 else None
        return _matmul_flops(first_in, b, first_out)
    if op_type == "Gemm":
        return _gemm_flops(first_in, first_out, int(attributes.get("transA", 0) or 0))
    if op_type == "Einsum":
        # Without parsing the equation: the contraction size is bounded by the larger input.
        largest = max((numel(s) for s in input_shapes), default=0)
        return 2.0 * max(largest, numel(first_out))
    if op_type in ("Conv", "ConvInteger", "FusedConv"):
        weight = input_shapes[1] if len(input_shapes) > 1 else None
        return _conv_flops(weight, first_out, len(input_shapes) > 2)
    if op_type == "QLinearConv":
        weight = input_shapes[3] if len(input_shapes) > 3 else None
        return _conv_flops(weight, first_out, len(input_shapes) > 8)
    if op_type == "ConvTranspose":
        weight = input_shapes[1] if len(input_shapes) > 1 else None
        return _conv_transpose_flops(first_in, weight, int(attributes.get("group", 1) or 1))
    if op_type in MOVEMENT_OPS or op_type in CONTROL_OPS:
        return 0.0
    if op_type in _POOL_OPS:
        kernel = attributes.get("kernel_shape") or ()
        return float(numel(first_out) * math.prod(int(k) for k in kernel))
    if op_type in _GLOBAL_POOL_OPS or op_type.startswith(_REDUCE_PREFIX):
        return float(numel(first_in))
    cost = _ELEMENTWISE_COST.get(op_type, 1.0)
    return cost * float(max(numel(first_out), numel(first_in)))
