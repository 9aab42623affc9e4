"""Session-wide tiny HF checkpoints (built once with transformers) and their references."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
import pytest

import support.hf_checkpoints as hf


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """checkpoint(kind) -> directory of a tiny random HF checkpoint of that kind."""
    root = tmp_path_factory.mktemp("hf_checkpoints")

    @cache
    def get(kind: str) -> Path:
        return hf.build(kind, root / kind)

    return get


@pytest.fixture(scope="session")
def reference(checkpoint: Callable[[str], Path]) -> Callable[[str, tuple[int, ...]], np.ndarray]:
    """reference(kind, ids) -> transformers' fp32 logits, cached per (kind, ids)."""

    @cache
    def get(kind: str, ids: tuple[int, ...]) -> np.ndarray:
        return hf.reference_logits(checkpoint(kind), list(ids))

    return get


@pytest.fixture(scope="session")
def slice_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("slices")
