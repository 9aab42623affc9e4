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
from edge_runtime.llm import LocalRunner, RelativeSpeed, load_local_engine
from edge_runtime.llm.engine import BatchItem
from edge_runtime.llm.local import kv_cache_bytes
from partitioner.tensor import ACTIVATION_RESERVE_BYTES

KINDS = sorted(hf.MOE_KINDS)
IDS = (1, 5, 17, 33, 99, 150, 7, 8, 9, 10, 11, 12, 3)
PROMPT = (1, 40, 41, 42, 43)
MAX_CONTEXT = 48
LAYOUTS = {"1": [1.0], "2uneq": [2.0, 1.0], "3uneq": [3.0, 1.0, 1.5]}

Reference = Callable[[str, tuple[int, ...]], np.ndarray]
Greedy = Callable[[str, tuple[int, ...], int], list[int]]


def speeds(weights: list[float]) -> list[RelativeSpeed]:
    return [RelativeSpeed(f"dev{i}", w) for i, w in enumerate(weights)]


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("kind", KINDS)
def test_logits_match_transformers(kind: str, layout: str, checkpoint: Callable[[str], Path],
                                   reference: Reference, slice_cache: Path) -> None:
    engine, runner = load_local_engine(checkpoint(kind), cache_dir=slice_cache,
                                       devices=speeds(LAYOUTS[layout]), max_context=MAX_CONTEXT)
    try:
        got = engine.logits(list(IDS))
        shares = runner.plan.shares
    finally:
        runner.close()
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
    engine, runner = load_local_engine(checkpoint(kind), cache_dir=slice_cache,
                                       devices=speeds([2.0, 1.0]), max_context=MAX_CONTEXT)
    try:
        got = engine.generate(list(PROMPT), max_new_tokens=16)
    finally:
        runner.close()
    assert list(got.token_ids) == expected


@pytest.mark.parametrize("kind", KINDS)
def test_memory_window_streams_and_matches(kind: str, checkpoint: Callable[[str], Path],
                                           reference: Reference, greedy: Greedy,
                                           slice_cache: Path) -> None:
    """3 unequal workers whose budgets hold two blocks, not their share: the planner
    places the experts by time (they exceed every budget), each block (a layer's router
    and experts of the share) is read from disk again each pass, and logits and greedy
    tokens still match."""
    ckpt = checkpoint(kind)
    probe = LocalRunner(ckpt, cache_dir=slice_cache, devices=speeds(LAYOUTS["3uneq"]),
                        max_context=MAX_CONTEXT)
    probe.close()
    budgets: list[int | None] = [
        ACTIVATION_RESERVE_BYTES + kv_cache_bytes(probe.config, share, MAX_CONTEXT)
        + 2 * max(b.nbytes for b in w.blocks)
        for w, share in zip(probe.workers, probe.plan.shares, strict=True)]
    engine, runner = load_local_engine(ckpt, cache_dir=slice_cache,
                                       devices=speeds(LAYOUTS["3uneq"]),
                                       memory_budgets=budgets, max_context=MAX_CONTEXT)
    try:
        logits = engine.logits(list(IDS))
        tokens = [e.token_id for e in engine.stream(list(PROMPT), max_new_tokens=10)]
        stats = runner.stats()
        shares = runner.plan.shares
    finally:
        runner.close()
    assert any("stream" in note for note in runner.plan.notes)
    assert all(s.streaming for s in shares if s.n_experts)
    assert np.abs(logits - reference(kind, IDS)).max() <= 1e-3
    assert tokens == greedy(kind, PROMPT, 10)
    for st in stats:
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
        want = [runner.forward(list(p), 0, last_only=False) for p in prompts]
        every = runner.forward_batch([BatchItem(i, p, 0) for i, p in enumerate(prompts)],
                                     last_only=False)
        lows = np.cumsum([0] + [len(p) for p in prompts])
        for i, w in enumerate(want):
            np.testing.assert_allclose(every[lows[i]:lows[i + 1]], w, rtol=1e-5, atol=1e-5)
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
    runner = LocalRunner(checkpoint(kind), cache_dir=slice_cache, max_context=MAX_CONTEXT)
    try:
        worker = runner.workers[0]
        assert getattr(worker.config, field) != value
        worker.config = dataclasses.replace(worker.config, **{field: value})
        got = runner.forward(list(IDS), 0, last_only=False)
    finally:
        runner.close()
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
