"""Qwen3, Gemma 2, Gemma 3 and Phi-3 split over REAL agent processes against transformers.

Two agents of the session's local cluster (real `edge-runtime agent` subprocesses,
activations summed by the star allreduce over CURVE-secured ZeroMQ), shares 2 : 1 from
a given plan: fp32 logits within 1e-3 of transformers and greedy generations equal to
`generate(do_sample=False)`. Gemma 3 also streams through a memory window of two blocks
per agent; Gemma 2 also runs 4-bit, equal to the same 4-bit split in one process. A
config the engine does not run is refused by name before any agent loads anything.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import edge_runtime as er
import support.hf_checkpoints as hf
import support.llm_compare as lc
from partitioner.tensor import TensorPlan
from support.llm_compare import IDS, MAX_CONTEXT, Greedy
from support.llm_compare import Reference as Ref

NEW_TOKENS = 12


def two_to_one(ckpt: Path, names: list[str], budgets: list[int | None] | None = None
               ) -> TensorPlan:
    return lc.named_plan(ckpt, names[:2], [2.0, 1.0], MAX_CONTEXT, budgets)


@pytest.mark.parametrize("kind", sorted(hf.ARCH_KINDS))
def test_architecture_over_two_agents_matches_transformers(
    kind: str, cluster: er.LocalCluster, checkpoint: Callable[[str], Path], reference: Ref,
    greedy: Greedy, tmp_path: Path,
) -> None:
    names = [a.name for a in cluster.agents][:2]
    ckpt = checkpoint(kind)
    plan = two_to_one(ckpt, names)
    budgets: list[int | None] | None = None
    if kind == "gemma3":  # and through a window smaller than each share
        budgets = lc.plan_window_budgets(ckpt, plan, tmp_path, MAX_CONTEXT)
        plan = two_to_one(ckpt, names, budgets)
        assert all(s.streaming for s in plan.shares)
    llm = cluster.deploy_llm(ckpt, max_context=MAX_CONTEXT, devices=names, plan=plan,
                             memory_budget=budgets)
    try:
        assert llm.plan.shares[0].weight_bytes > llm.plan.shares[1].weight_bytes
        got = llm.logits(list(IDS))
        assert np.abs(got - reference(kind, IDS)).max() <= 1e-3
        gen = llm.generate(list(IDS[:6]), NEW_TOKENS)
        assert list(gen.token_ids) == greedy(kind, IDS[:6], NEW_TOKENS)
        for name, st in llm.status().items():
            assert st["window"]["resident"] == (budgets is None), name
    finally:
        llm.unload()


def test_gemma2_4bit_over_agents_equals_the_in_process_split(
    cluster: er.LocalCluster, checkpoint: Callable[[str], Path], tmp_path: Path,
) -> None:
    """The same 4-bit kernels in agents and in one process; the allreduce's summation
    order may move a value across an int8 rounding step (as in test_llm_q4: 0.05 x std)."""
    names = [a.name for a in cluster.agents][:2]
    ckpt = checkpoint("gemma2")
    plan = two_to_one(ckpt, names)
    got, want = lc.q4_agents_and_local(cluster, ckpt, names, plan, tmp_path, MAX_CONTEXT, IDS)
    assert np.abs(got - want).max() <= 0.05 * float(want.std())


def test_unsupported_architecture_field_is_refused_before_loading(
    cluster: er.LocalCluster, checkpoint: Callable[[str], Path], tmp_path: Path,
) -> None:
    longrope = {"rope_type": "longrope", "rope_theta": 10000.0,
                "short_factor": [1.0] * 8, "long_factor": [1.0] * 8}
    lc.assert_refused_before_loading(cluster, checkpoint("phi3"), tmp_path / "longrope",
                                     {"rope_parameters": longrope}, "rope_type='longrope'",
                                     MAX_CONTEXT)
