"""Execution backends, chosen per stage by the shard's file type.

`.onnx` → onnxruntime (`onnxruntime.py`); `.tflite` → LiteRT (`litert.py`,
needs `ai-edge-litert`). Callers depend only on the `Backend` protocol in `base`.
Backend modules are imported on first use, so an agent without LiteRT still runs
`.onnx` stages.
"""

from __future__ import annotations

import logging
from pathlib import Path

from edge_runtime.backends.base import Backend
from edge_runtime.errors import DeployError
from edge_runtime.protocol import TensorSpec

log = logging.getLogger(__name__)

SUFFIXES: tuple[str, ...] = (".onnx", ".tflite")


def open_backend(path: str | Path, threads: int | None = None) -> Backend:
    """Load the model file at `path` in the backend its suffix calls for.

    Raises `DeployError` for an unknown file type or a backend the device lacks.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from edge_runtime.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(path, threads=threads)
    if suffix == ".tflite":
        from edge_runtime.backends.litert import open_litert

        return open_litert(path, threads=threads)
    raise DeployError(
        f"cannot run {path.name}: unknown model type {suffix!r}; use one of {list(SUFFIXES)}"
    )


def backend_kinds() -> list[str]:
    """The model file types this device can run (reported in the agent's hello)."""
    from edge_runtime.backends.litert import litert_runtime

    return [".onnx", ".tflite"] if litert_runtime() is not None else [".onnx"]


__all__ = ["SUFFIXES", "Backend", "TensorSpec", "backend_kinds", "open_backend"]
