"""One local cluster of three real agents shared by the LLM integration tests
(the HF checkpoints and their references are in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import edge_runtime as er


@pytest.fixture(scope="session")
def cluster() -> Iterator[er.LocalCluster]:
    """Three CURVE-secured agents (agent0..agent2) for every test that does not kill one."""
    with er.local_cluster(3) as local:
        yield local
