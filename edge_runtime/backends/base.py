"""The one small interface every execution backend implements.

`TensorSpec` (a model input's name, dtype and shape) is a wire record
(`edge_runtime.protocol`): the coordinator sends stage 0's signature with it.
An agent runs each pipeline stage through a `Backend` chosen by the shard's file
type and what the device offers (`open_backend` in `__init__`). Keeping the
interface this narrow (a signature and `run`) is what lets onnxruntime and LiteRT
stages mix in one pipeline.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from edge_runtime.errors import InputError
from edge_runtime.protocol.records import TensorSpec


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


def check_feeds(specs: tuple[TensorSpec, ...], feeds: dict[str, np.ndarray]) -> None:
    """Raise `InputError` naming the expected signature unless `feeds` matches `specs`."""
    expected = {spec.name for spec in specs}
    problems: list[str] = []
    missing = sorted(expected - feeds.keys())
    extra = sorted(feeds.keys() - expected)
    if missing:
        problems.append(f"missing {missing}")
    if extra:
        problems.append(f"unexpected {extra}")
    for spec in specs:
        array = feeds.get(spec.name)
        if array is not None and not isinstance(array, np.ndarray):
            problems.append(f"{spec.name} must be a numpy array, got {type(array).__name__}")
        elif array is not None and not spec.accepts(array):
            problems.append(f"{spec.name} is {array.dtype}{list(array.shape)}")
    if problems:
        signature = ", ".join(spec.describe() for spec in specs)
        raise InputError(
            f"inputs do not match the model: {'; '.join(problems)}. Expected {signature}"
        )
