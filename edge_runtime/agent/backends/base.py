"""The one small interface every execution backend implements.

An agent runs each pipeline stage through a `Backend` chosen by the shard's file
type and what the device offers (`open_backend` in `__init__`). Keeping the
interface this narrow (a signature and `run`) is what lets onnxruntime and LiteRT
stages mix in one pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of one model input or output.

    A dimension is an int when fixed and a string (its symbolic name) or None
    when any size is accepted (e.g. a dynamic batch).
    """

    name: str
    dtype: str
    shape: tuple[int | str | None, ...]

    def accepts(self, array: np.ndarray) -> bool:
        """True if `array` matches this spec's dtype, rank and fixed dimensions."""
        if np.dtype(self.dtype) != array.dtype or array.ndim != len(self.shape):
            return False
        return all(
            not isinstance(dim, int) or dim == size
            for dim, size in zip(self.shape, array.shape, strict=True)
        )

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


class Backend(Protocol):
    """A loaded model (one stage) ready to run."""

    @property
    def inputs(self) -> tuple[TensorSpec, ...]: ...

    @property
    def outputs(self) -> tuple[TensorSpec, ...]: ...

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once; `feeds` holds exactly `inputs`, the result exactly `outputs`."""
        ...

    def close(self) -> None:
        """Release the model's memory."""
        ...
