"""Qwen3, Gemma 2, Gemma 3 and Phi-3 through the tensor-parallel engine against transformers.

Tiny random checkpoints (`support.hf_checkpoints.ARCH_KINDS`) over 1, 2 and 3 in-process
workers with unequal shares, resident and through a memory window smaller than the
share: fp32 logits within 1e-3 of transformers and greedy generations identical to its
`generate(do_sample=False)`. A last test switches each architecture feature off in the
engine and shows that the logits then leave the tolerance, so the comparisons above
would catch a feature the engine dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import support.hf_checkpoints as hf
import support.llm_compare as lc
from edge_runtime.llm import LocalRunner
from support.llm_compare import IDS, LAYOUTS, MAX_CONTEXT, PROMPT, Greedy, Reference

ARCHS = sorted(hf.ARCH_KINDS)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("kind", ARCHS)
def test_logits_match_transformers(kind: str, layout: str, checkpoint: Callable[[str], Path],
                                   reference: Reference, slice_cache: Path) -> None:
    got, shares = lc.layout_logits(checkpoint(kind), slice_cache, LAYOUTS[layout], MAX_CONTEXT,
                                   IDS)
    if layout == "3uneq":
        assert shares[0].weight_bytes > shares[2].weight_bytes > shares[1].weight_bytes
    ref = reference(kind, IDS)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-3


@pytest.mark.parametrize("kind", ARCHS)
def test_greedy_matches_transformers(kind: str, checkpoint: Callable[[str], Path],
                                     greedy: Greedy, slice_cache: Path) -> None:
    expected = greedy(kind, PROMPT, 16)
    got = lc.greedy_tokens(checkpoint(kind), slice_cache, [2.0, 1.0], MAX_CONTEXT, PROMPT, 16)
    assert got == expected


@pytest.mark.parametrize("kind", ARCHS)
def test_memory_window_streams_and_matches(kind: str, checkpoint: Callable[[str], Path],
                                           reference: Reference, greedy: Greedy,
                                           slice_cache: Path) -> None:
    """3 unequal workers whose budgets hold two blocks, not their share: every block is
    read from disk again for each pass, and logits and greedy tokens still match."""
    run = lc.window_run(checkpoint(kind), slice_cache, LAYOUTS["3uneq"], MAX_CONTEXT, IDS,
                        PROMPT, 10)
    assert np.abs(run.logits - reference(kind, IDS)).max() <= 1e-3
    assert run.tokens == greedy(kind, PROMPT, 10)
    for st in run.stats:
        assert not st.resident
        assert st.loads >= 2 * st.blocks
        assert st.peak_loaded_bytes <= st.budget_bytes


# (kind, LlmConfig field, value the engine is switched to): each must move the logits.
FEATURES: list[tuple[str, str, Any]] = [
    ("qwen3", "qk_norm", False),
    ("gemma2", "attn_softcap", None),
    ("gemma2", "final_softcap", None),
    ("gemma2", "query_pre_attn_scalar", None),
    ("gemma2", "sliding_layers", (False, False, False)),
    ("gemma2", "hidden_act", "silu"),
    ("gemma2", "embed_scale", 1.0),
    ("gemma3", "qk_norm", False),
    ("gemma3", "local_rope", None),
    ("gemma3", "sliding_layers", (True, True, True)),
    ("phi3", "sliding_window", None),
]


@pytest.mark.parametrize("kind, field, value", FEATURES,
                         ids=[f"{k}-{f}" for k, f, _ in FEATURES])
def test_each_feature_changes_the_logits(kind: str, field: str, value: Any,
                                         checkpoint: Callable[[str], Path],
                                         reference: Reference, slice_cache: Path) -> None:
    got = lc.switched_logits(checkpoint(kind), slice_cache, MAX_CONTEXT, IDS, field, value)
    assert np.abs(got - reference(kind, IDS)).max() > 1e-2


@pytest.mark.parametrize("kind", ["gemma2", "gemma3"])
def test_gemma_norm_weights_are_stored_as_one_plus_w(
    kind: str, checkpoint: Callable[[str], Path], slice_cache: Path
) -> None:
    from edge_runtime.llm import Checkpoint
    from edge_runtime.llm.slices import block_arrays
    from edge_runtime.llm.window import read_block

    ckpt = Checkpoint(checkpoint(kind))
    runner = LocalRunner(ckpt, cache_dir=slice_cache, max_context=MAX_CONTEXT)
    runner.close()
    blocks = runner.workers[0].blocks
    attn = block_arrays(blocks[0], read_block(blocks[0].path, blocks[0].nbytes))
    mlp = block_arrays(blocks[1], read_block(blocks[1].path, blocks[1].nbytes))
    p = "model.layers.0."
    pairs = [(attn["norm"], "input_layernorm"), (attn["post_norm"], "post_attention_layernorm"),
             (mlp["norm"], "pre_feedforward_layernorm"),
             (mlp["post_norm"], "post_feedforward_layernorm")]
    if kind == "gemma3":
        pairs.append((attn["q_norm"], "self_attn.q_norm"))
    for stored, name in pairs:
        w = ckpt.tensor(p + name + ".weight")
        assert np.abs(w).max() > 0.1  # the fixture's norms are perturbed from 0
        np.testing.assert_array_equal(stored, w + np.float32(1.0))


@pytest.mark.parametrize("kind", ARCHS)
def test_a_batch_equals_each_sequence_alone(kind: str, checkpoint: Callable[[str], Path],
                                            reference: Reference, slice_cache: Path) -> None:
    """Several sequences in one step (packed kernels, one KV slot each): each equals its
    run alone and transformers, prefills of different lengths and a batched decode."""
    prompts = [(1, 5, 17, 33, 99, 7, 8), (2, 9), (7, 7, 7, 120, 3)]
    runner = LocalRunner(checkpoint(kind), cache_dir=slice_cache,
                         devices=lc.speeds([2.0, 1.0]), max_context=32, slots=len(prompts))
    try:
        assert all(w.packed for w in runner.workers)
        want = lc.assert_batch_prefill_matches(runner, prompts)
        for i, w in enumerate(want):
            assert np.abs(w - reference(kind, prompts[i])).max() <= 1e-3
        nxt, last = lc.batched_decode(runner, prompts, want)
        for i, p in enumerate(prompts):
            full = runner.forward([*p, nxt[i]], 0, last_only=False)
            np.testing.assert_allclose(last[i], full[-1], rtol=1e-5, atol=1e-5)
    finally:
        runner.close()
