"""Qwen3-MoE and Mixtral with their experts spread over REAL agent processes.

The session's local cluster (real `edge-runtime agent` subprocesses, partial outputs
summed by the allreduce over CURVE-secured ZeroMQ): every agent computes the same
top-k routing and runs only its own experts. Qwen3-MoE over three agents with unequal
shares, Mixtral over two through a memory window of two blocks per agent: fp32 logits
within 1e-3 of transformers and greedy generations equal to `generate(do_sample=False)`;
4-bit experts over agents equal the same 4-bit split in one process. A config with a
dense layer among the sparse ones is refused by name before any agent loads anything.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

import edge_runtime as er
import support.llm_compare as lc
from partitioner.tensor import TensorPlan
from support.llm_compare import IDS, MAX_CONTEXT, Greedy
from support.llm_compare import Reference as Ref

NEW_TOKENS = 12


def plan_for(ckpt: Path, names: list[str], speeds: list[float],
             budgets: list[int | None] | None = None) -> TensorPlan:
    return lc.named_plan(ckpt, names, speeds, MAX_CONTEXT, budgets)


def test_qwen3_moe_experts_over_three_agents_match_transformers(
    cluster: er.LocalCluster, checkpoint: Callable[[str], Path], reference: Ref,
    greedy: Greedy,
) -> None:
    names = [a.name for a in cluster.agents][:3]
    ckpt = checkpoint("qwen3_moe")
    plan = plan_for(ckpt, names, [3.0, 1.0, 1.5])
    llm = cluster.deploy_llm(ckpt, max_context=MAX_CONTEXT, devices=names, plan=plan)
    try:
        counts = [s.n_experts for s in llm.plan.shares]
        assert sum(counts) == 6 and len(set(counts)) > 1 and all(counts)
        got = llm.logits(list(IDS))
        assert np.abs(got - reference("qwen3_moe", IDS)).max() <= 1e-3
        gen = llm.generate(list(IDS[:6]), NEW_TOKENS)
        assert list(gen.token_ids) == greedy("qwen3_moe", IDS[:6], NEW_TOKENS)
    finally:
        llm.unload()


def test_mixtral_experts_stream_through_a_window_over_two_agents(
    cluster: er.LocalCluster, checkpoint: Callable[[str], Path], reference: Ref,
    greedy: Greedy, tmp_path: Path,
) -> None:
    names = [a.name for a in cluster.agents][:2]
    ckpt = checkpoint("mixtral")
    plan = plan_for(ckpt, names, [2.0, 1.0])
    budgets = lc.plan_window_budgets(ckpt, plan, tmp_path, MAX_CONTEXT)
    plan = plan_for(ckpt, names, [2.0, 1.0], budgets)
    assert all(s.streaming for s in plan.shares)
    llm = cluster.deploy_llm(ckpt, max_context=MAX_CONTEXT, devices=names, plan=plan,
                             memory_budget=budgets)
    try:
        got = llm.logits(list(IDS))
        assert np.abs(got - reference("mixtral", IDS)).max() <= 1e-3
        gen = llm.generate(list(IDS[:6]), NEW_TOKENS)
        assert list(gen.token_ids) == greedy("mixtral", IDS[:6], NEW_TOKENS)
        for name, st in llm.status().items():
            assert not st["window"]["resident"], name
    finally:
        llm.unload()


def test_4bit_experts_over_agents_equal_the_in_process_split(
    cluster: er.LocalCluster, checkpoint: Callable[[str], Path], tmp_path: Path,
) -> None:
    """The same 4-bit expert kernels in agents and in one process (the allreduce's
    summation order may move a value across an int8 rounding step: 0.05 x std)."""
    names = [a.name for a in cluster.agents][:2]
    ckpt = checkpoint("qwen3_moe")
    plan = plan_for(ckpt, names, [2.0, 1.0])
    got, want = lc.q4_agents_and_local(cluster, ckpt, names, plan, tmp_path, MAX_CONTEXT, IDS)
    assert np.abs(got - want).max() <= 0.05 * float(want.std())


def test_a_dense_layer_among_experts_is_refused_before_loading(
    cluster: er.LocalCluster, checkpoint: Callable[[str], Path], tmp_path: Path,
) -> None:
    lc.assert_refused_before_loading(cluster, checkpoint("qwen3_moe"), tmp_path / "dense-layer",
                                     {"mlp_only_layers": [0]}, r"mlp_only_layers=\[0\]",
                                     MAX_CONTEXT)
