"""Real agents whose tensor group runs over plain TCP links (the default, with a spin) or
ZeroMQ sockets (`EDGE_RUNTIME_GROUP_LINKS=zmq`): sealed either way, logits within 1e-3 of
transformers with fp32 sync, q8 sync over the same links, and the status naming the
links, the spin and the sync format."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

import edge_runtime as er

IDS = (1, 5, 17, 33, 99, 150, 7, 8)


@pytest.fixture(scope="module", params=["tcp", "zmq"])
def links_cluster(request: pytest.FixtureRequest) -> Iterator[tuple[str, er.LocalCluster]]:
    with pytest.MonkeyPatch.context() as patch:  # the agents inherit this environment
        if request.param == "zmq":
            patch.setenv("EDGE_RUNTIME_GROUP_LINKS", "zmq")
        else:
            patch.delenv("EDGE_RUNTIME_GROUP_LINKS", raising=False)
        patch.setenv("EDGE_RUNTIME_GROUP_SPIN_US", "20")
        with er.local_cluster(2) as local:
            yield request.param, local


def test_agents_over_either_links_match_transformers(
    links_cluster: tuple[str, er.LocalCluster], checkpoint: Callable[[str], Path],
    reference: Callable[[str, tuple[int, ...]], np.ndarray],
) -> None:
    links, cluster = links_cluster
    want = reference("llama", IDS)
    for sync, tolerance in (("fp32", 1e-3), ("q8", 0.2)):
        llm = cluster.deploy_llm(checkpoint("llama"), max_context=48, sync=sync)
        try:
            error = float(np.abs(llm.logits(list(IDS)) - want).max())
            assert error <= tolerance, (sync, error)
            assert len(llm.generate(list(IDS[:4]), 6).token_ids) == 6
            groups = [s["collective"] for s in llm.status().values()]
            assert all(g["links"] == links and g["spin_us"] == 20 and g["sealed"]
                       and g["sync"] == sync and g["rejected"] == 0 for g in groups), groups
        finally:
            llm.unload()
