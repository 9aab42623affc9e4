"""The tensor-parallel forward pass against Hugging Face transformers.

1, 2 and 3 workers (equal and unequal shares, more workers than KV heads), with every
block resident and with a window of two blocks streamed from disk; fp32 logits within
1e-3 of transformers and greedy generations identical to `generate(do_sample=False)`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import support.hf_checkpoints as hf
from edge_runtime.llm import LocalRunner, RelativeSpeed, load_local_engine
from edge_runtime.llm.local import kv_cache_bytes
from partitioner.tensor import ACTIVATION_RESERVE_BYTES

IDS = (1, 5, 17, 33, 99, 150, 7, 8, 9, 10, 11, 12, 3)
MAX_CONTEXT = 48
LAYOUTS = {
    "1": [1.0],
    "2eq": [1.0, 1.0],
    "3uneq": [3.0, 1.0, 1.5],
}


def speeds(weights: list[float]) -> list[RelativeSpeed]:
    return [RelativeSpeed(f"dev{i}", w) for i, w in enumerate(weights)]


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("kind", sorted(hf.KINDS))
def test_logits_match_transformers(
    kind: str,
    layout: str,
    checkpoint: Callable[[str], Path],
    reference: Callable[[str, tuple[int, ...]], np.ndarray],
    slice_cache: Path,
) -> None:
    engine, runner = load_local_engine(
        checkpoint(kind),
        cache_dir=slice_cache,
        devices=speeds(LAYOUTS[layout]),
        max_context=MAX_CONTEXT,
    )
    try:
        got = engine.logits(list(IDS))
    finally:
        runner.close()
    ref = reference(kind, IDS)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-3


def test_unequal_shares_are_unequal_and_cover_the_model(
    checkpoint: Callable[[str], Path], slice_cache: Path
) -> None:
    _, runner = load_local_engine(
        checkpoint("llama"),
        cache_dir=slice_cache,
        devices=speeds([3.0, 1.0, 1.5]),
        max_context=MAX_CONTEXT,
    )
    runner.close()
    shares = runner.plan.shares
    assert next(s.kv_heads for s in shares) == (0, 1)  # the fastest device gets a KV group
    assert shares[1].n_kv_heads == 0  # 3 devices, 2 KV heads: one does MLP work only
    assert shares[1].n_columns > 0
    assert sum(s.n_columns for s in shares) == hf.COMMON["intermediate_size"]
    assert sum(s.n_vocab_rows for s in shares) == hf.COMMON["vocab_size"]
    assert shares[0].weight_bytes > shares[2].weight_bytes > shares[1].weight_bytes


def small_window_budgets(
    runner_dir: Path, weights: list[float], slice_cache: Path
) -> list[int | None]:
    """Budgets leaving each device a window of two of its largest blocks."""
    probe = LocalRunner(
        runner_dir, cache_dir=slice_cache, devices=speeds(weights), max_context=MAX_CONTEXT
    )
    probe.close()
    out: list[int | None] = []
    for w, share in zip(probe.workers, probe.plan.shares, strict=True):
        largest = max(b.nbytes for b in w.blocks)
        out.append(
            ACTIVATION_RESERVE_BYTES
            + kv_cache_bytes(probe.config, share, MAX_CONTEXT)
            + 2 * largest
        )
    return out


@pytest.mark.parametrize("kind, layout", [("llama", "2eq"), ("qwen2", "3uneq"), ("mistral", "1")])
def test_small_window_streams_and_matches(
    kind: str,
    layout: str,
    checkpoint: Callable[[str], Path],
    reference: Callable[[str, tuple[int, ...]], np.ndarray],
    slice_cache: Path,
) -> None:
    budgets = small_window_budgets(checkpoint(kind), LAYOUTS[layout], slice_cache)
    engine, runner = load_local_engine(
        checkpoint(kind),
        cache_dir=slice_cache,
        devices=speeds(LAYOUTS[layout]),
        memory_budgets=budgets,
        max_context=MAX_CONTEXT,
    )
    try:
        first = engine.logits(list(IDS))
        second = engine.logits(list(IDS))
        stats = runner.stats()
    finally:
        runner.close()
    ref = reference(kind, IDS)
    assert np.abs(first - ref).max() <= 1e-3
    np.testing.assert_array_equal(first, second)
    for st in stats:
        assert not st.resident
        # every streamed block was read again for the second pass; pinned ones once
        assert st.loads >= st.pinned_blocks + 2 * (st.blocks - st.pinned_blocks)
        assert st.peak_loaded_bytes <= st.budget_bytes


def test_resident_window_never_reloads(
    checkpoint: Callable[[str], Path], slice_cache: Path
) -> None:
    engine, runner = load_local_engine(
        checkpoint("llama"),
        cache_dir=slice_cache,
        devices=speeds([1.0, 2.0]),
        max_context=MAX_CONTEXT,
    )
    try:
        engine.generate(list(IDS[:4]), max_new_tokens=5, stop=[])
        engine.logits(list(IDS))
        stats = runner.stats()
    finally:
        runner.close()
    for st in stats:
        assert st.resident
        assert st.loads == st.blocks
        # prefill + 4 decode steps (the 5th token is not fed back) + one logits pass
        assert st.uses == 6 * st.blocks


@pytest.mark.parametrize("kind", ["llama", "llama3", "mistral", "qwen2"])
def test_greedy_generation_matches_transformers(
    kind: str, checkpoint: Callable[[str], Path], slice_cache: Path
) -> None:
    prompt = [1, 40, 41, 42, 43]
    expected = hf.reference_greedy(checkpoint(kind), prompt, max_new_tokens=16)
    engine, runner = load_local_engine(
        checkpoint(kind), cache_dir=slice_cache, devices=speeds([2.0, 1.0]), max_context=MAX_CONTEXT
    )
    try:
        got = engine.generate(prompt, max_new_tokens=16)
    finally:
        runner.close()
    assert list(got.token_ids) == expected
    assert got.finish_reason == ("stop" if expected[-1] == 2 else "length")


def test_greedy_with_streaming_window_matches_transformers(
    checkpoint: Callable[[str], Path], slice_cache: Path
) -> None:
    prompt = [1, 40, 41, 42, 43]
    expected = hf.reference_greedy(checkpoint("mistral"), prompt, max_new_tokens=12)
    budgets = small_window_budgets(checkpoint("mistral"), [1.0, 1.0], slice_cache)
    engine, runner = load_local_engine(
        checkpoint("mistral"),
        cache_dir=slice_cache,
        devices=speeds([1.0, 1.0]),
        memory_budgets=budgets,
        max_context=MAX_CONTEXT,
    )
    try:
        got = [e.token_id for e in engine.stream(prompt, max_new_tokens=12)]
    finally:
        runner.close()
    assert got == expected
