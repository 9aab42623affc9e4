"""Tiny random HF checkpoints (built once per session by transformers), their reference
outputs, and one local cluster of three real agents shared by the LLM integration tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path

import numpy as np
import pytest

import edge_runtime as er
import support.hf_checkpoints as hf


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """checkpoint(kind) -> directory of a tiny random HF checkpoint of that kind."""
    root = tmp_path_factory.mktemp("hf_llm")

    @cache
    def get(kind: str) -> Path:
        return hf.build(kind, root / kind)

    return get


@pytest.fixture(scope="session")
def reference(checkpoint: Callable[[str], Path]) -> Callable[[str, tuple[int, ...]], np.ndarray]:
    """reference(kind, ids) -> transformers' fp32 logits [len(ids), vocab]."""

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


@pytest.fixture(scope="session")
def cluster() -> Iterator[er.LocalCluster]:
    """Three CURVE-secured agents (agent0..agent2) for every test that does not kill one."""
    with er.local_cluster(3) as local:
        yield local
