"""Helpers for tests that run real agent clusters (`edge_runtime.local_cluster`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from support.onnx_models import DIGITS_MODEL, run_model

__all__ = ["DIGITS_MODEL", "assert_outputs_equal", "digits_inputs", "reference"]


DIGITS_TEST = DIGITS_MODEL.parent / "test_split.npz"


def digits_inputs(batch: int = 1, start: int = 0) -> dict[str, np.ndarray]:
    """Real digit images from the model's held-out test split."""
    with np.load(DIGITS_TEST) as data:
        images = np.asarray(data["images"][start:start + batch], dtype=np.float32)
    return {"image": images.reshape(batch, 1, 8, 8)}


def reference(model: Path | str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The whole model in one onnxruntime session: what a pipeline must reproduce."""
    return run_model(model, feeds)


def assert_outputs_equal(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray],
                         names: list[str] | None = None, atol: float = 1e-5) -> None:
    for name in names if names is not None else list(want):
        assert name in got, f"output {name} missing; got {sorted(got)}"
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=atol, err_msg=name)
