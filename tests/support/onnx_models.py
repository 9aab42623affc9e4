"""Builders of small ONNX test models and a reference shard chainer.

Every builder writes a real ONNX file (onnx.helper, seeded random weights) that
onnxruntime runs; the architectures cover what the partitioner must cut correctly:
a plain chain, residual skips, multiple inputs and outputs, dynamic batch, wide
skips (every cut carries several tensors), an `If` node, grouped/depthwise convs,
attention-shaped batched MatMuls, and a model with early-exit heads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
REPO = Path(__file__).resolve().parents[2]
DIGITS_MODEL = REPO / "examples" / "digits" / "digits_exits.onnx"


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def _init(rng: np.random.Generator, name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)


def mlp_chain(path: Path, layers: int = 6, width: int = 32, seed: int = 0) -> Path:
    """x[batch, width] → (MatMul, Add, Relu) × layers → y. Dynamic batch."""
    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i in range(layers):
        inits += [_init(rng, f"w{i}", width, width), _init(rng, f"b{i}", width)]
        nodes += [
            helper.make_node("MatMul", [prev, f"w{i}"], [f"mm{i}"]),
            helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"add{i}"]),
            helper.make_node("Relu", [f"add{i}"], [f"h{i}" if i < layers - 1 else "y"]),
        ]
        prev = f"h{i}"
    graph = helper.make_graph(
        nodes,
        "mlp_chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        initializer=inits,
    )
    return _save(graph, path)


def residual_cnn(path: Path, blocks: int = 3, channels: int = 8, seed: int = 1) -> Path:
    """Conv stem then residual blocks (conv-relu-conv + skip), grouped and depthwise convs."""
    rng = np.random.default_rng(seed)
    c = channels
    nodes = [helper.make_node("Conv", ["x", "stem_w"], ["s0"], pads=[1, 1, 1, 1])]
    inits = [_init(rng, "stem_w", c, 3, 3, 3)]
    prev = "s0"
    for i in range(blocks):
        inits += [_init(rng, f"g{i}", c, c // 2, 3, 3), _init(rng, f"dw{i}", c, 1, 3, 3)]
        nodes += [
            helper.make_node("Conv", [prev, f"g{i}"], [f"c{i}a"], pads=[1, 1, 1, 1], group=2),
            helper.make_node("Relu", [f"c{i}a"], [f"r{i}"]),
            helper.make_node("Conv", [f"r{i}", f"dw{i}"], [f"c{i}b"], pads=[1, 1, 1, 1], group=c),
            helper.make_node("Add", [prev, f"c{i}b"], [f"res{i}"]),
            helper.make_node("Relu", [f"res{i}"], [f"o{i}"]),
        ]
        prev = f"o{i}"
    nodes += [
        helper.make_node("GlobalAveragePool", [prev], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    inits += [_init(rng, "fc_w", 10, c), _init(rng, "fc_b", 10)]
    graph = helper.make_graph(
        nodes,
        "residual_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=inits,
    )
    return _save(graph, path)


def multi_io(path: Path, seed: int = 2) -> Path:
    """Two inputs (one used late, so it passes through cuts), two outputs (one early)."""
    rng = np.random.default_rng(seed)
    inits = [_init(rng, "wa", 16, 16), _init(rng, "wb", 8, 16), _init(rng, "wc", 16, 4)]
    nodes = [
        helper.make_node("MatMul", ["a", "wa"], ["a1"]),
        helper.make_node("Tanh", ["a1"], ["a2"]),
        helper.make_node("ReduceSum", ["a2"], ["aux"], keepdims=1, axes=None),
        helper.make_node("Sigmoid", ["a2"], ["a3"]),
        helper.make_node("MatMul", ["b", "wb"], ["b1"]),
        helper.make_node("Mul", ["a3", "b1"], ["ab"]),
        helper.make_node("Add", ["ab", "a1"], ["ab2"]),
        helper.make_node("MatMul", ["ab2", "wc"], ["main"]),
    ]
    graph = helper.make_graph(
        nodes,
        "multi_io",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 16]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 8]),
        ],
        [
            helper.make_tensor_value_info("aux", TensorProto.FLOAT, ["batch", 1]),
            helper.make_tensor_value_info("main", TensorProto.FLOAT, ["batch", 4]),
        ],
        initializer=inits,
    )
    return _save(graph, path)


def wide_skips(path: Path, depth: int = 6, width: int = 8, seed: int = 3) -> Path:
    """Every layer's output is summed into the last one: every cut carries many tensors."""
    rng = np.random.default_rng(seed)
    nodes, inits, outs, prev = [], [], [], "x"
    for i in range(depth):
        inits.append(_init(rng, f"w{i}", width, width))
        nodes += [
            helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]),
            helper.make_node("Relu", [f"m{i}"], [f"h{i}"]),
        ]
        outs.append(f"h{i}")
        prev = f"h{i}"
    nodes.append(helper.make_node("Sum", outs, ["y"]))
    graph = helper.make_graph(
        nodes,
        "wide_skips",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        initializer=inits,
    )
    return _save(graph, path)


def attention_block(path: Path, seq: int = 8, dim: int = 16, seed: int = 4) -> Path:
    """Single-head self-attention: batched Q·Kᵀ and P·V MatMuls, softmax, residual."""
    rng = np.random.default_rng(seed)
    inits = [_init(rng, n, dim, dim) for n in ("wq", "wk", "wv", "wo")]
    inits.append(numpy_helper.from_array(np.array(1 / np.sqrt(dim), np.float32), "scale"))
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"]),
        helper.make_node("MatMul", ["x", "wk"], ["k"]),
        helper.make_node("MatMul", ["x", "wv"], ["v"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"]),
        helper.make_node("Mul", ["scores", "scale"], ["scaled"]),
        helper.make_node("Softmax", ["scaled"], ["probs"], axis=-1),
        helper.make_node("MatMul", ["probs", "v"], ["ctx"]),
        helper.make_node("MatMul", ["ctx", "wo"], ["proj"]),
        helper.make_node("Add", ["x", "proj"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "attention_block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", seq, dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", seq, dim])],
        initializer=inits,
    )
    return _save(graph, path)


def with_if(path: Path, seed: int = 5) -> Path:
    """An `If` node whose branches read an outer-scope tensor: must stay atomic."""
    rng = np.random.default_rng(seed)
    inits = [_init(rng, "w", 8, 8)]
    then_graph = helper.make_graph(
        [helper.make_node("Relu", ["h"], ["t_out"])],
        "then",
        [],
        [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, ["batch", 8])],
    )
    else_graph = helper.make_graph(
        [helper.make_node("Neg", ["h"], ["e_out"])],
        "else",
        [],
        [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, ["batch", 8])],
    )
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
        helper.make_node(
            "Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0.0, np.float32))
        ),
        helper.make_node("Greater", ["total", "zero"], ["cond"]),
        helper.make_node(
            "If", ["cond"], ["branch"], then_branch=then_graph, else_branch=else_graph
        ),
        helper.make_node("Add", ["branch", "zero"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "with_if",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        initializer=inits,
    )
    return _save(graph, path)


def exits_mlp(path: Path, seed: int = 6) -> Path:
    """Three blocks with exit heads `exit1`, `exit2` and the final `logits`."""
    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i in range(3):
        inits += [_init(rng, f"w{i}", 16, 16), _init(rng, f"head{i}", 16, 5)]
        nodes += [
            helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]),
            helper.make_node("Relu", [f"m{i}"], [f"h{i}"]),
        ]
        out = f"exit{i + 1}" if i < 2 else "logits"
        nodes.append(helper.make_node("MatMul", [f"h{i}", f"head{i}"], [out]))
        prev = f"h{i}"
    graph = helper.make_graph(
        nodes,
        "exits_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 5])
            for n in ("exit1", "exit2", "logits")
        ],
        initializer=inits,
    )
    return _save(graph, path)


def run_model(path: Path | str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a whole ONNX model in onnxruntime (one thread)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(feeds)), strict=True))


def chain_shards(
    plan_dir: Path, plan: object, feeds: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Run a plan's shards in order like the runtime does; return every model output.

    Each stage gets its `inputs` from what earlier stages produced or passed on;
    afterwards only the stage's `forward` set (plus model outputs) is kept, so a
    stage that relied on something not forwarded fails here too.
    """
    from partitioner.plan import Plan

    assert isinstance(plan, Plan)
    carried: dict[str, np.ndarray] = dict(feeds)
    outputs: dict[str, np.ndarray] = {}
    for stage in plan.stages:
        assert stage.shard_file is not None
        produced = run_model(plan_dir / stage.shard_file, {k: carried[k] for k in stage.inputs})
        carried.update(produced)
        outputs.update({k: v for k, v in produced.items() if k in stage.outputs})
        carried = {k: carried[k] for k in stage.forward}
    return outputs


def random_feeds(path: Path | str, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float inputs for every model input, symbolic dims set to `batch`."""
    rng = np.random.default_rng(seed)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {}
    for value in session.get_inputs():
        shape = [d if isinstance(d, int) else batch for d in value.shape]
        feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


ALL_BUILDERS: Sequence[tuple[str, object]] = (
    ("mlp_chain", mlp_chain),
    ("residual_cnn", residual_cnn),
    ("multi_io", multi_io),
    ("wide_skips", wide_skips),
    ("attention_block", attention_block),
    ("with_if", with_if),
    ("exits_mlp", exits_mlp),
)
