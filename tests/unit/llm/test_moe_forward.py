"""Qwen3-MoE and Mixtral through the expert-parallel engine against transformers.

Tiny random checkpoints (`support.hf_checkpoints.MOE_KINDS`) over 1, 2 and 3 in-process
workers with unequal shares (experts placed by the planner, a worker may hold none),
resident and through a memory window smaller than the share: fp32 logits within 1e-3
of transformers and greedy generations identical to its `generate(do_sample=False)`.
The last tests show the comparisons can fail: a worker that skips its experts, or a
routing rule switched (renormalised top-k weights, k), moves the logits out of the
tolerance.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import support.hf_checkpoints as hf
import support.llm_compare as lc
from edge_runtime.llm import LocalRunner
from support.llm_compare import IDS, LAYOUTS, MAX_CONTEXT, PROMPT, Greedy, Reference, speeds

KINDS = sorted(hf.MOE_KINDS)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("kind", KINDS)
def test_logits_match_transformers(kind: str, layout: str, checkpoint: Callable[[str], Path],
                                   reference: Reference, slice_cache: Path) -> None:
    got, shares = lc.layout_logits(checkpoint(kind), slice_cache, LAYOUTS[layout], MAX_CONTEXT,
                                   IDS)
    experts = hf.spec_of(kind).get("num_experts") or hf.spec_of(kind)["num_local_experts"]
    assert [s.experts for s in shares][-1][1] == experts  # every expert placed once
    assert sum(s.n_experts for s in shares) == experts
    if len(shares) > 1:
        assert len({s.n_experts for s in shares}) > 1  # unequal shares
    ref = reference(kind, IDS)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_matches_transformers(kind: str, checkpoint: Callable[[str], Path],
                                     greedy: Greedy, slice_cache: Path) -> None:
    expected = greedy(kind, PROMPT, 16)
    got = lc.greedy_tokens(checkpoint(kind), slice_cache, [2.0, 1.0], MAX_CONTEXT, PROMPT, 16)
    assert got == expected


@pytest.mark.parametrize("kind", KINDS)
def test_memory_window_streams_and_matches(kind: str, checkpoint: Callable[[str], Path],
                                           reference: Reference, greedy: Greedy,
                                           slice_cache: Path) -> None:
    """3 unequal workers whose budgets hold two blocks, not their share: the planner
    places the experts by time (they exceed every budget), each block (a layer's router
    and experts of the share) is read from disk again each pass, and logits and greedy
    tokens still match."""
    run = lc.window_run(checkpoint(kind), slice_cache, LAYOUTS["3uneq"], MAX_CONTEXT, IDS,
                        PROMPT, 10)
    assert any("stream" in note for note in run.notes)
    assert all(s.streaming for s in run.shares if s.n_experts)
    assert np.abs(run.logits - reference(kind, IDS)).max() <= 1e-3
    assert run.tokens == greedy(kind, PROMPT, 10)
    for st in run.stats:
        assert not st.resident
        assert st.loads > st.blocks  # blocks were read again for later passes
        assert st.peak_loaded_bytes <= st.budget_bytes


@pytest.mark.parametrize("kind", KINDS)
def test_a_batch_equals_each_sequence_alone(kind: str, checkpoint: Callable[[str], Path],
                                            reference: Reference, slice_cache: Path) -> None:
    """Several sequences in one step (packed kernels, one KV slot each): tokens of all
    of them are routed together, and each equals its run alone and transformers."""
    prompts = [(1, 5, 17, 33, 99, 7, 8), (2, 9), (7, 7, 7, 120, 3)]
    runner = LocalRunner(checkpoint(kind), cache_dir=slice_cache, devices=speeds([2.0, 1.0]),
                         max_context=32, slots=len(prompts))
    try:
        assert all(w.packed for w in runner.workers)
        want = lc.assert_batch_prefill_matches(runner, prompts)
        for i, w in enumerate(want):
            assert np.abs(w - reference(kind, prompts[i])).max() <= 1e-3
    finally:
        runner.close()


def test_each_worker_adds_its_experts(checkpoint: Callable[[str], Path], reference: Reference,
                                      slice_cache: Path) -> None:
    """The partial outputs are summed across workers: one that skips its experts (its
    blocks still hold them) leaves the tolerance."""
    runner = LocalRunner(checkpoint("qwen3_moe"), cache_dir=slice_cache,
                         devices=speeds([2.0, 1.0]), max_context=MAX_CONTEXT)
    try:
        worker = runner.workers[1]
        assert worker.share.n_experts > 0
        end = worker.share.experts[1]
        worker.share = dataclasses.replace(worker.share, experts=(end, end))
        got = runner.forward(list(IDS), 0, last_only=False)
    finally:
        runner.close()
    assert np.abs(got - reference("qwen3_moe", IDS)).max() > 1e-2


# (kind, LlmConfig field, value the engine is switched to): each must move the logits.
FEATURES: list[tuple[str, str, Any]] = [
    ("qwen3_moe", "norm_topk_prob", True),
    ("qwen3_moe", "experts_per_token", 1),
    ("qwen3_moe", "qk_norm", False),
    ("mixtral", "norm_topk_prob", False),
    ("mixtral", "experts_per_token", 3),
    ("mixtral", "sliding_window", None),
]


@pytest.mark.parametrize("kind, field, value", FEATURES,
                         ids=[f"{k}-{f}" for k, f, _ in FEATURES])
def test_each_feature_changes_the_logits(kind: str, field: str, value: Any,
                                         checkpoint: Callable[[str], Path],
                                         reference: Reference, slice_cache: Path) -> None:
    got = lc.switched_logits(checkpoint(kind), slice_cache, MAX_CONTEXT, IDS, field, value)
    assert np.abs(got - reference(kind, IDS)).max() > 1e-2


@pytest.mark.parametrize("kind", KINDS)
def test_hybrid_stages_of_experts_match_transformers(
    kind: str, checkpoint: Callable[[str], Path], reference: Reference, slice_cache: Path,
) -> None:
    """A pipeline of two stages, the first a tensor-parallel pair: each stage places
    the experts of its own layers over its devices."""
    from edge_runtime.llm import Checkpoint, LlmEngine
    from edge_runtime.llm.pipeline import PipelineRunner
    from partitioner.llm_pipeline import plan_llm_layout

    config = Checkpoint(checkpoint(kind)).config
    layout = plan_llm_layout(config.decoder_shape(MAX_CONTEXT), speeds([2.0, 1.0, 1.5]),
                             [[0, 1], [2]])
    assert [len(s.plan.shares) for s in layout.stages] == [2, 1]
    for stage in layout.stages:
        assert sum(s.n_experts for s in stage.plan.shares) == config.experts
    runner = PipelineRunner(checkpoint(kind), layout, cache_dir=slice_cache,
                            max_context=MAX_CONTEXT)
    try:
        got = LlmEngine(runner, runner.config).logits(list(IDS))
    finally:
        runner.close()
    assert np.abs(got - reference(kind, IDS)).max() <= 1e-3
