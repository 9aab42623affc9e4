"""Load, check and shape-infer an ONNX model for analysis (no weights needed).

Why two inference passes: the planner needs concrete sizes (FLOPs and bytes at a
chosen batch size), while the runtime needs each shard's input signature with the
symbolic dimensions kept (so a stage accepts any batch). The model is loaded without
its external data, so a model over 2 GB is analysed without reading its weights: the
checker runs on the path (the protobuf 2 GB limit does not apply) and shape inference
on the small in-memory graph.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import ModelProto, TensorProto

from partitioner.errors import ModelLoadError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorInfo:
    """What analysis knows of one tensor: dtype, symbolic shape, concrete shape and size."""

    name: str
    dtype: str  # numpy dtype name; "" when unknown
    shape: tuple[int | str, ...] | None  # symbolic dims kept as strings
    concrete: tuple[int, ...] | None  # at the planning batch size, unknown dims as 1
    nbytes: int


def load_model(path: str | Path) -> ModelProto:
    """The model without external data; raises `ModelLoadError` for anything not ONNX."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such model file; pass the path of an .onnx file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf raises DecodeError and others
        raise ModelLoadError(
            f"{path} is not an ONNX model ({type(error).__name__}: {error}); "
            "export it with torch.onnx.export or tf2onnx first"
        ) from error
    if not model.graph.node:
        raise ModelLoadError(f"{path} has no nodes: it is empty or not an ONNX model")
    try:
        onnx.checker.check_model(str(path))
    except Exception as error:
        raise ModelLoadError(
            f"{path} fails the ONNX checker: {error}. Fix the exporter's output "
            "(e.g. re-export with a supported opset) before planning"
        ) from error
    return model


def _dim_override(model: ModelProto, batch_size: int, dims: Mapping[str, int]) -> ModelProto:
    """A copy whose graph inputs have concrete dims: dim 0 → batch size, named ones from `dims`."""
    fixed = ModelProto()
    fixed.CopyFrom(model)
    initializers = {init.name for init in fixed.graph.initializer}
    for value in fixed.graph.input:
        if value.name in initializers or not value.type.HasField("tensor_type"):
            continue
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                continue
            name = dim.dim_param if dim.HasField("dim_param") else ""
            size = dims.get(
                f"{value.name}:{axis}", dims.get(name) if name and name != "?" else None
            )
            if size is None:
                size = batch_size if axis == 0 else 1
                if axis != 0:
                    log.warning(
                        "input %s axis %d is symbolic (%r): planning with 1; pass "
                        "dims={%r: N} (or {'%s:%d': N})",
                        value.name,
                        axis,
                        name,
                        name or "?",
                        value.name,
                        axis,
                    )
            dim.Clear()
            dim.dim_value = int(size)
    return fixed


def infer(model: ModelProto, source: str) -> ModelProto:
    """ONNX shape inference (strict, with data propagation); typed error on failure."""
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except Exception as error:
        raise ModelLoadError(
            f"{source}: ONNX shape inference failed ({error}). The model may use ops or "
            "shapes that onnx cannot infer, or the planning dims (batch_size, dims=) do not suit "
            "the model; re-export it with standard ops and static ranks, or fix the dims"
        ) from error


def _value_types(model: ModelProto) -> dict[str, onnx.TypeProto]:
    graph = model.graph
    types: dict[str, onnx.TypeProto] = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        if value.type.HasField("tensor_type"):
            types[value.name] = value.type
    for init in graph.initializer:
        tensor_type = onnx.helper.make_tensor_type_proto(init.data_type, list(init.dims))
        types.setdefault(init.name, tensor_type)
    return types


def np_dtype_name(elem_type: int) -> str:
    if elem_type == TensorProto.UNDEFINED:
        return ""
    try:
        return str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name)
    except (KeyError, TypeError, ValueError):
        return str(onnx.TensorProto.DataType.Name(elem_type)).lower()


def _itemsize(dtype: str) -> int:
    try:
        return int(np.dtype(dtype).itemsize)
    except TypeError:
        return 1  # e.g. float8 / int4 names numpy does not know: a byte is close enough


def tensor_infos(
    model: ModelProto, batch_size: int, dims: Mapping[str, int], source: str
) -> tuple[ModelProto, dict[str, TensorInfo]]:
    """Shape-infer the model twice and merge: symbolic shapes plus concrete sizes."""
    symbolic = infer(model, source)
    concrete = infer(_dim_override(model, batch_size, dims), source)
    sym_types = _value_types(symbolic)
    con_types = _value_types(concrete)
    infos: dict[str, TensorInfo] = {}
    for name in set(sym_types) | set(con_types):
        sym = sym_types.get(name) or con_types[name]
        con = con_types.get(name) or sym
        dtype = np_dtype_name(sym.tensor_type.elem_type)
        shape: tuple[int | str, ...] | None = None
        if sym.tensor_type.HasField("shape"):
            shape = tuple(
                d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?")
                for d in sym.tensor_type.shape.dim
            )
        conc: tuple[int, ...] | None = None
        if con.tensor_type.HasField("shape"):
            conc = tuple(
                d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1
                for d in con.tensor_type.shape.dim
            )
        if shape is None and conc is not None:
            shape = tuple("?" for _ in conc)  # rank known only at concrete sizes
        nbytes = int(np.prod(conc)) * _itemsize(dtype) if conc is not None and dtype else 0
        infos[name] = TensorInfo(name, dtype, shape, conc, nbytes)
    return symbolic, infos
