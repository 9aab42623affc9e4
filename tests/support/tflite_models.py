"""Build small `.tflite` models for tests without TensorFlow.

ai-edge-litert ships the flatbuffers object API of the TFLite schema
(`ai_edge_litert/schema_py_generated.py`); a model is a `ModelT` with one subgraph
of tensors and operators, packed with the file identifier `TFL3`. This is enough to
give the LiteRT backend real files to load and run, whose results a test can check
against numpy.
"""

from __future__ import annotations

from pathlib import Path

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as tfl

_TFLITE_TYPES: dict[str, int] = {
    "float32": tfl.TensorType.FLOAT32,
    "int32": tfl.TensorType.INT32,
    "int64": tfl.TensorType.INT64,
    "uint8": tfl.TensorType.UINT8,
    "int8": tfl.TensorType.INT8,
}


def _tensor(
    name: str, shape: list[int], buffer: int, dtype: str = "float32", dynamic_batch: bool = False
) -> tfl.TensorT:
    tensor = tfl.TensorT()
    tensor.name = name
    tensor.shape = list(shape)
    tensor.type = _TFLITE_TYPES[dtype]
    tensor.buffer = buffer
    tensor.hasRank = True
    if dynamic_batch:
        tensor.shapeSignature = [-1, *shape[1:]]
    return tensor


def _buffer(data: np.ndarray | None = None) -> tfl.BufferT:
    buffer = tfl.BufferT()
    if data is not None:
        buffer.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), dtype=np.uint8)
    return buffer


def _opcode(builtin: int) -> tfl.OperatorCodeT:
    code = tfl.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = builtin
    code.version = 1
    return code


def _pack(model: tfl.ModelT) -> bytes:
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _write(model: tfl.ModelT, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_pack(model))
    return path


def fully_connected_model(
    path: Path,
    weights: np.ndarray,
    bias: np.ndarray,
    relu: bool = False,
    batch: int = 1,
    dynamic_batch: bool = False,
    input_name: str = "x",
    output_name: str = "y",
) -> Path:
    """One FULLY_CONNECTED op: y = x @ weights.T + bias (then ReLU if `relu`).

    `weights` has shape (out_features, in_features), as TFLite stores it.
    With `dynamic_batch` the batch dimension's signature is -1, so the interpreter
    accepts any batch after a resize.
    """
    out_features, in_features = weights.shape
    model = tfl.ModelT()
    model.version = 3
    model.description = "edge-runtime test: fully connected"
    model.operatorCodes = [_opcode(tfl.BuiltinOperator.FULLY_CONNECTED)]
    # Buffer 0 is the empty sentinel every TFLite model starts with.
    model.buffers = [
        _buffer(),
        _buffer(),
        _buffer(weights.astype(np.float32)),
        _buffer(bias.astype(np.float32)),
        _buffer(),
    ]
    subgraph = tfl.SubGraphT()
    subgraph.name = "main"
    subgraph.tensors = [
        _tensor(input_name, [batch, in_features], 1, dynamic_batch=dynamic_batch),
        _tensor("weights", [out_features, in_features], 2),
        _tensor("bias", [out_features], 3),
        _tensor(output_name, [batch, out_features], 4, dynamic_batch=dynamic_batch),
    ]
    options = tfl.FullyConnectedOptionsT()
    options.fusedActivationFunction = (
        tfl.ActivationFunctionType.RELU if relu else tfl.ActivationFunctionType.NONE
    )
    operator = tfl.OperatorT()
    operator.opcodeIndex = 0
    operator.inputs = [0, 1, 2]
    operator.outputs = [3]
    operator.builtinOptionsType = tfl.BuiltinOptions.FullyConnectedOptions
    operator.builtinOptions = options
    subgraph.operators = [operator]
    subgraph.inputs = [0]
    subgraph.outputs = [3]
    model.subgraphs = [subgraph]
    return _write(model, path)


def add_model(
    path: Path,
    shape: tuple[int, ...] = (2, 3),
    dtype: str = "float32",
    names: tuple[str, str, str] = ("a", "b", "sum"),
) -> Path:
    """One ADD op with two graph inputs: sum = a + b (same shape and dtype)."""
    model = tfl.ModelT()
    model.version = 3
    model.description = "edge-runtime test: add"
    model.operatorCodes = [_opcode(tfl.BuiltinOperator.ADD)]
    model.buffers = [_buffer(), _buffer(), _buffer(), _buffer()]
    subgraph = tfl.SubGraphT()
    subgraph.name = "main"
    subgraph.tensors = [
        _tensor(names[0], list(shape), 1, dtype),
        _tensor(names[1], list(shape), 2, dtype),
        _tensor(names[2], list(shape), 3, dtype),
    ]
    operator = tfl.OperatorT()
    operator.opcodeIndex = 0
    operator.inputs = [0, 1]
    operator.outputs = [2]
    operator.builtinOptionsType = tfl.BuiltinOptions.AddOptions
    operator.builtinOptions = tfl.AddOptionsT()
    subgraph.operators = [operator]
    subgraph.inputs = [0, 1]
    subgraph.outputs = [2]
    model.subgraphs = [subgraph]
    return _write(model, path)


__all__ = ["add_model", "fully_connected_model"]
