"""A "q4" share whose budget cannot take the 4-bit kernels streams int8 blocks, through
REAL agent processes (`deploy_llm(quantize="q4", memory_budget=...)`).

A 6-layer random Llama built by transformers (the shared tiny ones have 2 layers, so
their int8 share is smaller than one fp32 block, the least a window must hold, and
nothing would stream). References: the same plan run in this process by
`TensorWorker(stream_quantized=True)` with the same window (equal logits: the same
kernel over the same bytes, and a 2-way allreduce is one addition, so its order
cannot matter), and transformers' fp32 logits (int8 weights and activations: within
10 % of the logits' largest magnitude, the tolerance of `test_window_placements.py`).
And an agent in a real memory cgroup below its int8 share generates, not OOM-killed.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

import edge_runtime as er
from devices.cgroup import MemoryCgroup, memory_cgroups_available
from edge_runtime.errors import ConfigError
from edge_runtime.llm import Checkpoint, convert_share
from edge_runtime.llm.engine import Generation
from edge_runtime.llm.local import ThreadCollective, window_budget
from edge_runtime.llm.synthetic import SyntheticShape, write_synthetic_checkpoint
from edge_runtime.llm.worker import TensorWorker
from edge_runtime.sdk.llm_plan import (
    Q4_STREAM_NOTE,
    fp32_block_bytes,
    int8_block_bytes,
    plan_llm,
)
from partitioner.tensor import ACTIVATION_RESERVE_BYTES, TensorPlan
from tests.support import hf_checkpoints as hf

CONTEXT = 32
IDS = (1, 5, 17, 33, 99, 4, 8, 150, 7)


@pytest.fixture(scope="module")
def deep_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared tiny Llama's widths with 6 layers."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    directory = tmp_path_factory.mktemp("deep_llama")
    torch.manual_seed(0)
    config = LlamaConfig(**{**hf.COMMON, "num_hidden_layers": 6})
    model = AutoModelForCausalLM.from_config(  # type: ignore[no-untyped-call]
        config, attn_implementation="eager")
    model.eval()
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def streaming_budget(plan: TensorPlan) -> int:
    """A budget per agent that cannot take the 4-bit kernels but holds about half of the
    int8 blocks (and the largest fp32 block, which each int8 block is converted from)."""
    out = 0
    for share in plan.shares:
        fixed = plan.shape.kv_cache_bytes(share.n_kv_heads) + ACTIVATION_RESERVE_BYTES
        _, largest = fp32_block_bytes(plan.shape, share)
        half = sum(int8_block_bytes(plan.shape, share)) // 2
        out = max(out, fixed + max(largest, half))
    assert all(out < s.peak_memory_bytes for s in plan.shares)  # 4-bit would not fit
    return out


def in_process(ckpt_dir: Path, plan: TensorPlan, budget: int, read_bps: float,
               cache: Path) -> tuple[np.ndarray, list[TensorWorker]]:
    """The plan's shares as int8-streaming workers in this process, the agents' window."""
    ckpt = Checkpoint(ckpt_dir)
    workers = []
    for share in plan.shares:
        slices = convert_share(ckpt, share, cache)
        window = window_budget(ckpt.config, share, slices, budget, CONTEXT)
        workers.append(TensorWorker(ckpt.config, slices, share, max_context=CONTEXT,
                                    window_budget_bytes=window, quantize="q4",
                                    stream_quantized=True, read_bps=read_bps))
    collective = ThreadCollective(len(workers), plan.hub)
    outs: list[np.ndarray | None] = [None] * len(workers)

    def run(rank: int) -> None:
        outs[rank] = workers[rank].forward(
            list(IDS), list(range(len(IDS))), lambda x: collective.allreduce(rank, x),
            lambda x: collective.gather(rank, x), last_only=False)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(len(workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    hub = outs[plan.hub]
    assert hub is not None
    return hub, workers


@pytest.mark.parametrize("agents", [1, 2])
def test_a_q4_share_over_budget_streams_int8_and_equals_the_in_process_worker(
    agents: int, cluster: er.LocalCluster, deep_llama: Path, tmp_path: Path,
) -> None:
    names = [a.name for a in cluster.agents][:agents]
    ckpt = Checkpoint(deep_llama)
    resident = plan_llm(cluster, ckpt.config, ckpt.digest, names, [None] * agents, CONTEXT,
                        quantize="q4")
    budget = streaming_budget(resident)
    llm = cluster.deploy_llm(deep_llama, max_context=CONTEXT, devices=names, quantize="q4",
                             memory_budget=budget)
    try:
        plan = llm.plan
        assert all(s.streaming and s.peak_memory_bytes == budget for s in plan.shares)
        assert sum(Q4_STREAM_NOTE in note for note in plan.notes) == agents
        status = llm.status()
        logits = llm.logits(list(IDS))
        text = llm.generate(list(IDS), 4)
        assert isinstance(text, Generation) and len(text.token_ids) == 4
        after = llm.status()
    finally:
        llm.unload()
    read_bps = cluster.info(names[0]).profile.disk_read_gbps * 1e9
    local, workers = in_process(deep_llama, plan, budget, read_bps, tmp_path)
    try:
        for name, worker in zip(names, workers, strict=True):
            window = status[name]["window"]
            assert worker.residency is not None and worker.window is not None
            # the agent kept the same blocks as the in-process worker, some of them
            assert 0 < window["pinned_blocks"] == len(worker.residency.resident) \
                < window["blocks"]
            assert window["streamed_bytes_per_pass"] == worker.residency.bytes_read_per_token
            assert window["peak_loaded_bytes"] <= window["budget_bytes"]
            # streamed blocks were read again on every pass (prefill, then each token)
            grew = after[name]["window"]["bytes_read"] - window["bytes_read"]
            assert grew >= 4 * worker.residency.bytes_read_per_token > 0
    finally:
        for w in workers:
            w.close()
    np.testing.assert_array_equal(logits, local)
    ref = hf.reference_logits(deep_llama, list(IDS))
    assert np.abs(logits - ref).max() <= 0.1 * np.abs(ref).max()
    assert np.abs(logits - ref).max() > 0  # really int8, not the fp32 share


def test_a_budget_that_cannot_even_stream_is_refused_before_any_agent_loads(
    cluster: er.LocalCluster, deep_llama: Path,
) -> None:
    names = [a.name for a in cluster.agents][:1]
    ckpt = Checkpoint(deep_llama)
    plan = plan_llm(cluster, ckpt.config, ckpt.digest, names, [None], CONTEXT, quantize="q4")
    share = plan.shares[0]
    _, largest = fp32_block_bytes(plan.shape, share)
    least = plan.shape.kv_cache_bytes(share.n_kv_heads) + ACTIVATION_RESERVE_BYTES + largest
    before = {n: set(st["deployments"]) for n, st in cluster.status().items()}
    with pytest.raises(ConfigError, match="nor stream it as int8 blocks"):
        cluster.deploy_llm(deep_llama, max_context=CONTEXT, devices=names, quantize="q4",
                           memory_budget=least - 1)
    assert {n: set(st["deployments"]) for n, st in cluster.status().items()} == before


# ~145 MB of fp32 weights (test_window_cgroup.py's shape); its int8 blocks are ~36 MB
CGROUP_SHAPE = SyntheticShape(hidden=768, intermediate=2048, layers=4, heads=12, kv_heads=12,
                              vocab=4096, max_position_embeddings=256)
CGROUP_LIMIT = 56 * 2**20  # below the 4-bit kernels' loading peak; 24 MB for ~32 MB of int8
OVERHEAD = 150 * 2**20  # the target: peak RSS <= window + KV cache + 150 MB


def test_a_q4_agent_under_a_cgroup_limit_below_its_int8_share_generates(
    tmp_path: Path,
) -> None:
    """A real memory cgroup (page cache charged): the agent reads its budget from the
    limit, the plan streams int8 blocks, nothing is OOM-killed. Skipped, saying why,
    where memory cgroups cannot be created."""
    why = memory_cgroups_available()
    if why is not None:
        pytest.skip(f"memory cgroups cannot be created here: {why}")
    ckpt = write_synthetic_checkpoint(tmp_path / "ckpt", CGROUP_SHAPE)
    group = MemoryCgroup(f"er-test-int8-{os.getpid()}", CGROUP_LIMIT)
    try:
        with er.local_cluster(1, insecure=True, log_level="WARNING",
                              cache_dirs=[tmp_path / "cache"],
                              allow_checkpoint_dirs=[ckpt]) as cluster:
            process = cluster.processes[0].process
            assert process is not None
            group.join(process.pid)  # joined after starting: the interpreter is charged outside
            llm = cluster.deploy_llm(ckpt, memory_budget=CGROUP_LIMIT, max_context=CONTEXT,
                                     quantize="q4")
            share = llm.plan.shares[0]
            text = llm.generate([5, 9, 100, 7], 8)
            status = next(iter(llm.status().values()))
            alive = cluster.processes[0].alive()
            llm.unload()
        assert group.oom_kills() == 0 and alive
        assert isinstance(text, Generation) and len(text.token_ids) == 8
        assert share.streaming and share.window_bytes < share.weight_bytes
        window = status["window"]
        assert not window["resident"] and window["streamed_bytes_per_pass"] > 0
        kv = llm.plan.shape.kv_cache_bytes(share.n_kv_heads)
        assert status["peak_rss_bytes"] <= window["budget_bytes"] + kv + OVERHEAD
        peak = group.peak_bytes()
        assert peak is None or peak <= CGROUP_LIMIT
    finally:
        group.remove()
