"""An agent in a memory cgroup whose limit (page cache included) is smaller than its
share completes a generation: nothing is OOM-killed, the window streams, and the
serving RSS stays within window + KV cache + 150 MB. Skipped, with the reason, where
memory cgroups cannot be created (not root, no memory controller).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import edge_runtime as er
from devices.cgroup import (
    MemoryCgroup,
    default_memory_budget,
    memory_cgroups_available,
    read_limits,
)
from edge_runtime.llm.synthetic import SyntheticShape, write_synthetic_checkpoint

# ~145 MB of fp32 weights (4 layers of 768 x 2048, vocab 4096)
SHAPE = SyntheticShape(hidden=768, intermediate=2048, layers=4, heads=12, kv_heads=12,
                       vocab=4096, max_position_embeddings=256)
LIMIT = 120 * 2**20  # smaller than the share
CONTEXT = 64
OVERHEAD = 150 * 2**20  # the target: peak RSS <= window + KV cache + 150 MB


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_checkpoint(tmp_path_factory.mktemp("synthetic") / "ckpt", SHAPE)


def test_an_agent_under_a_limit_smaller_than_its_share_generates(
    checkpoint: Path, tmp_path: Path
) -> None:
    why = memory_cgroups_available()
    if why is not None:
        pytest.skip(f"memory cgroups cannot be created here: {why}")
    share = sum(f.stat().st_size for f in checkpoint.glob("*.safetensors"))
    assert share > LIMIT
    group = MemoryCgroup(f"er-test-{os.getpid()}", LIMIT)
    try:
        with er.local_cluster(1, insecure=True, log_level="WARNING",
                              cache_dirs=[tmp_path / "cache"],
                              allow_checkpoint_dirs=[checkpoint]) as cluster:
            pid = cluster.processes[0].process.pid
            group.join(pid)
            # what the agent reads as its budget inside this cgroup by default; it joined
            # after starting, so its interpreter is charged outside and the whole limit
            # is the share's
            limits = read_limits(proc_self_cgroup=Path(f"/proc/{pid}/cgroup").read_text())
            assert limits.memory_limit_bytes == LIMIT
            budget = default_memory_budget(limits, baseline=0)
            assert budget == LIMIT
            llm = cluster.deploy_llm(checkpoint, memory_budget=budget, max_context=CONTEXT)
            text = llm.generate([5, 9, 100, 7], 8)
            status = next(iter(llm.status().values()))
            alive = cluster.processes[0].alive()
            llm.unload()
        assert group.oom_kills() == 0 and alive
        assert len(text.token_ids) == 8
        window = status["window"]
        assert not window["resident"] and window["bytes_read"] > share  # it streamed
        kv = 2 * SHAPE.layers * SHAPE.kv_heads * CONTEXT * (SHAPE.hidden // SHAPE.heads) * 4
        assert status["peak_rss_bytes"] <= window["budget_bytes"] + kv + OVERHEAD
        peak = group.peak_bytes()
        assert peak is None or peak <= LIMIT
    finally:
        group.remove()
