"""Fixtures shared across test folders.

The tiny random Hugging Face checkpoints and their transformers references are
session-wide: the in-process engine tests (tests/unit/llm) and the real-agent tests
(tests/integration/llm) compare against the same checkpoints, built once per run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path

import numpy as np
import pytest

import support.hf_checkpoints as hf


@pytest.fixture(scope="session", autouse=True)
def private_user_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """EDGE_RUNTIME_CACHE_DIR in a directory of this run, for this process and every
    agent it starts: the device profile and the coordinator's file-hash cache default to
    ~/.cache/edge-runtime, which outlives a run and is shared with other runs and the
    user. A test must neither depend on what an earlier run left there nor write there."""
    with pytest.MonkeyPatch.context() as patch:
        root = tmp_path_factory.mktemp("user-cache")
        patch.setenv("EDGE_RUNTIME_CACHE_DIR", str(root))
        yield root


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
    """reference(kind, ids) -> transformers' fp32 logits [len(ids), vocab], cached."""

    @cache
    def get(kind: str, ids: tuple[int, ...]) -> np.ndarray:
        return hf.reference_logits(checkpoint(kind), list(ids))

    return get


@pytest.fixture(scope="session")
def greedy(checkpoint: Callable[[str], Path]) -> Callable[[str, tuple[int, ...], int], list[int]]:
    """greedy(kind, ids, n) -> transformers' `generate(do_sample=False)` new tokens."""

    @cache
    def get(kind: str, ids: tuple[int, ...], n: int) -> list[int]:
        return hf.reference_greedy(checkpoint(kind), list(ids), n)

    return get
