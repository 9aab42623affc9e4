"""One local cluster of three emulated devices shared by the trace tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import edge_runtime as er

PRESETS = ["raspberry-pi-4", "jetson-orin-nano", "phone"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[er.LocalCluster]:
    with er.local_cluster(3, presets=PRESETS) as local:
        yield local
