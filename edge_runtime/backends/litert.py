"""The LiteRT (TensorFlow Lite) execution backend for `.tflite` stages.

Phones and small boards often ship models as `.tflite` and run them fastest in
LiteRT (XNNPACK on ARM CPUs), so a pipeline may mix onnxruntime and LiteRT stages.
`ai_edge_litert` is the maintained interpreter and works with NumPy 2;
`tflite_runtime` is tried only as a fallback because its last release was built
against NumPy 1 and fails to create an interpreter under NumPy 2 (see NOTES.md).

The interpreter is not thread-safe and keeps one set of input/output buffers, so
`run` holds a lock and copies outputs out before releasing it.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.backends.base import check_feeds
from edge_runtime.errors import ConfigError, DeployError
from edge_runtime.protocol import TensorSpec

log = logging.getLogger(__name__)

INSTALL_HINT = "install it with `pip install 'edge-runtime[tflite]'` (ai-edge-litert)"


def _load_interpreter_class() -> tuple[Any, str] | None:
    """The `Interpreter` class of the first LiteRT package that imports, and its name."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai-edge-litert"
    except ImportError:
        pass
    try:  # NumPy-1 environments only; see the module docstring.
        from tflite_runtime.interpreter import Interpreter as LegacyInterpreter

        return LegacyInterpreter, "tflite-runtime"
    except ImportError:
        return None


def litert_runtime() -> str | None:
    """Name of the LiteRT package this process can use, or None if none is installed.

    Agents report this in their profile so the planner only sends `.tflite` stages
    to devices that can run them.
    """
    found = _load_interpreter_class()
    return None if found is None else found[1]


def _spec(detail: dict[str, Any]) -> TensorSpec:
    signature = detail.get("shape_signature")
    dims = signature if signature is not None and len(signature) else detail["shape"]
    shape = tuple(None if int(d) < 0 else int(d) for d in dims)
    return TensorSpec(name=str(detail["name"]), dtype=np.dtype(detail["dtype"]).name, shape=shape)


class LiteRTBackend:
    """One `.tflite` model loaded in a LiteRT interpreter, behind the `Backend` protocol.

    `threads` comes from the agent's resource caps (an emulated Raspberry Pi gets
    its 4 cores' worth, not the host's); None lets LiteRT choose.
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        self._path = Path(path)
        if threads is not None and threads < 1:
            raise ConfigError(f"threads must be at least 1, got {threads}")
        if not self._path.is_file():
            raise DeployError(f"no .tflite model at {self._path}: check the shard path")
        found = _load_interpreter_class()
        if found is None:
            raise DeployError(f"cannot run {self._path.name}: no LiteRT runtime; {INSTALL_HINT}")
        interpreter_class, self.runtime = found
        try:
            self._interpreter = interpreter_class(model_path=str(self._path), num_threads=threads)
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as error:
            raise DeployError(
                f"LiteRT could not load {self._path.name}: {error}. "
                "Is it a valid .tflite file built with builtin ops only?"
            ) from error
        self.threads = threads
        self._lock = threading.Lock()
        self._input_details = list(self._interpreter.get_input_details())
        self._output_details = list(self._interpreter.get_output_details())
        self._inputs = tuple(_spec(d) for d in self._input_details)
        self._outputs = tuple(_spec(d) for d in self._output_details)
        # The shapes the interpreter is currently allocated for; a resize (e.g. a new
        # batch size) re-allocates, which is slow, so it is done only on a change.
        self._allocated = {
            int(d["index"]): tuple(int(s) for s in d["shape"]) for d in self._input_details
        }
        self._closed = False
        log.info(
            "loaded %s in %s (threads=%s): inputs %s, outputs %s",
            self._path.name,
            self.runtime,
            threads,
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
        """Run once; raises `InputError` if `feeds` does not match `inputs`."""
        if self._closed:
            raise DeployError(f"{self._path.name} was unloaded; deploy it again")
        check_feeds(self._inputs, feeds)
        with self._lock:
            resized = False
            for detail, spec in zip(self._input_details, self._inputs, strict=True):
                index = int(detail["index"])
                shape = tuple(feeds[spec.name].shape)
                if self._allocated[index] != shape:
                    self._interpreter.resize_tensor_input(index, list(shape), strict=True)
                    self._allocated[index] = shape
                    resized = True
            if resized:
                self._interpreter.allocate_tensors()
            for detail, spec in zip(self._input_details, self._inputs, strict=True):
                self._interpreter.set_tensor(
                    int(detail["index"]), np.ascontiguousarray(feeds[spec.name])
                )
            self._interpreter.invoke()
            # get_tensor copies, so the results survive the next invoke.
            return {
                spec.name: self._interpreter.get_tensor(int(detail["index"]))
                for detail, spec in zip(self._output_details, self._outputs, strict=True)
            }

    def close(self) -> None:
        """Drop the interpreter (and with it the model's buffers)."""
        with self._lock:
            self._closed = True
            self._interpreter = None


def open_litert(path: str | Path, threads: int | None = None) -> LiteRTBackend:
    """Load a `.tflite` file; the entry point `open_backend` calls for `.tflite` shards."""
    return LiteRTBackend(path, threads=threads)


__all__ = ["INSTALL_HINT", "LiteRTBackend", "litert_runtime", "open_litert"]
