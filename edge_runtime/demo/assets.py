"""Finding and reading the demo's files: the multi-exit digits model and its data splits.

The model and splits are committed under `examples/digits/` (built by its
`train.py`); an installed wheel carries a copy under `edge_runtime/assets/digits/`.
Looking in both means `edge-runtime demo` works from a checkout and from a wheel.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.errors import ConfigError

log = logging.getLogger(__name__)

MODEL_FILE = "digits_exits.onnx"
TEST_FILE = "test_split.npz"
CALIBRATION_FILE = "calibration.npz"

_PACKAGE = Path(__file__).resolve().parents[1]
SEARCH_PATH = (
    _PACKAGE / "assets" / "digits",
    _PACKAGE.parent / "examples" / "digits",
)


@dataclass(frozen=True)
class Split:
    """Images (float32 [n, 1, 8, 8]) and their labels (int64 [n])."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, count: int | None) -> Split:
        return self if count is None else Split(self.images[:count], self.labels[:count])


def find_assets(folder: Path | None = None) -> Path:
    """The folder holding the digits model and splits; `ConfigError` if none does."""
    candidates = (folder,) if folder is not None else SEARCH_PATH
    for candidate in candidates:
        if candidate is not None and (candidate / MODEL_FILE).is_file():
            return candidate
    looked = ", ".join(str(c) for c in candidates if c is not None)
    raise ConfigError(
        f"cannot find the demo model {MODEL_FILE} (looked in {looked}); "
        "build it with `python examples/digits/train.py` or pass --assets DIR"
    )


def load_split(path: Path) -> Split:
    """Read an `.npz` split without pickle; a missing or malformed file is a `ConfigError`."""
    if not path.is_file():
        raise ConfigError(f"missing demo data {path}; rebuild it with examples/digits/train.py")
    with np.load(path, allow_pickle=False) as data:
        if "images" not in data or "labels" not in data:
            raise ConfigError(f"{path} must hold arrays 'images' and 'labels'")
        images = np.ascontiguousarray(data["images"], dtype=np.float32)
        labels = np.asarray(data["labels"], dtype=np.int64)
    if images.ndim != 4 or len(images) != len(labels) or len(labels) == 0:
        raise ConfigError(f"{path}: images {images.shape} and labels {labels.shape} do not match")
    return Split(images, labels)


__all__ = [
    "CALIBRATION_FILE",
    "MODEL_FILE",
    "SEARCH_PATH",
    "TEST_FILE",
    "Split",
    "find_assets",
    "load_split",
]
