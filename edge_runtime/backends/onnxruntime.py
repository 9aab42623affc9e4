"""The onnxruntime execution backend for `.onnx` stages.

Threads and graph optimisation come from the agent's caps (an emulated
Raspberry Pi gets the thread count of a Pi), so a stage measured here predicts
what it would cost there. The session is created once per deployed stage and
reused for every request: creating a session costs far more than running one.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edge_runtime.backends.base import check_feeds
from edge_runtime.errors import DeployError
from edge_runtime.protocol import TensorSpec

log = logging.getLogger(__name__)

# onnxruntime's type strings ("tensor(float)") to numpy dtype names.
_ORT_TYPES: dict[str, str] = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(uint16)": "uint16",
    "tensor(int32)": "int32",
    "tensor(uint32)": "uint32",
    "tensor(int64)": "int64",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}


def _spec(node: object) -> TensorSpec:
    name = str(getattr(node, "name"))  # noqa: B009 - onnxruntime NodeArg is untyped
    ort_type = str(getattr(node, "type"))  # noqa: B009
    dtype = _ORT_TYPES.get(ort_type)
    if dtype is None:
        raise DeployError(f"tensor {name!r} has type {ort_type}, which edge-runtime cannot carry")
    dims: list[int | str | None] = []
    for dim in getattr(node, "shape"):  # noqa: B009
        dims.append(dim if isinstance(dim, int | str) else None)
    return TensorSpec(name=name, dtype=dtype, shape=tuple(dims))


class OnnxRuntimeBackend:
    """One onnxruntime `InferenceSession` (CPU) behind the `Backend` interface."""

    def __init__(self, path: Path, threads: int | None = None, optimize: bool = True) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads is not None and threads > 0:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if optimize
            else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        )
        options.log_severity_level = 3  # warnings from ORT would flood agent logs
        try:
            self._session = ort.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own untyped exceptions
            raise DeployError(f"onnxruntime cannot load {path.name}: {error}") from error
        self._inputs = tuple(_spec(n) for n in self._session.get_inputs())
        self._outputs = tuple(_spec(n) for n in self._session.get_outputs())
        self._output_names = [spec.name for spec in self._outputs]
        log.info(
            "loaded %s with %s threads: inputs %s, outputs %s",
            path.name,
            threads or "default",
            [s.describe() for s in self._inputs],
            [s.describe() for s in self._outputs],
        )

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._outputs

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feeds(self._inputs, feeds)
        values = self._session.run(self._output_names, feeds)
        pairs = zip(self._output_names, values, strict=True)
        return {name: np.asarray(value) for name, value in pairs}

    def close(self) -> None:
        del self._session
