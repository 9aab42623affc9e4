"""Pipeline and hybrid layouts in one process against transformers and one device.

Stages of layer ranges (unequal, sized by speed), tensor-parallel groups inside stages,
layer windows streamed from disk, several sequences per step cut into micro-batches:
logits within 1e-3 of transformers and greedy generations equal to
`generate(do_sample=False)` and to a single device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

import support.hf_checkpoints as hf
from edge_runtime.errors import MemoryBudgetError
from edge_runtime.llm import Checkpoint, LlmEngine, RelativeSpeed
from edge_runtime.llm.engine import BatchItem
from edge_runtime.llm.pipeline import PipelineRunner, stage_kv_bytes
from partitioner.llm_layout import LlmLayout
from partitioner.llm_pipeline import plan_llm_layout
from partitioner.tensor import ACTIVATION_RESERVE_BYTES
from support.llm_compare import build_deep_llama

IDS = (1, 5, 17, 33, 99, 150, 7, 8, 9, 10, 11, 12, 3)
MAX_CONTEXT = 48


@pytest.fixture(scope="module")
def deep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 5-layer Llama (GQA) made by transformers: room for three unequal stages."""
    return build_deep_llama(tmp_path_factory.mktemp("deep") / "llama5")


def layout_of(directory: Path, speeds: Sequence[float], groups: Sequence[Sequence[int]],
              streams: int = 1) -> LlmLayout:
    config = Checkpoint(directory).config
    devices = [RelativeSpeed(f"dev{i}", s) for i, s in enumerate(speeds)]
    return plan_llm_layout(config.decoder_shape(MAX_CONTEXT), devices, groups, streams=streams)


def run(directory: Path, layout: LlmLayout, cache: Path, **kw: object) -> PipelineRunner:
    return PipelineRunner(directory, layout, cache_dir=cache, max_context=MAX_CONTEXT, **kw)


LAYOUTS = {
    "pipeline-3-unequal": ([4.0, 1.0, 2.0], [[0], [1], [2]]),
    "pipeline-2": ([1.0, 1.0], [[0], [1]]),
    "hybrid-tp-pair-then-one": ([2.0, 1.0, 1.5], [[0, 1], [2]]),
    "hybrid-one-then-tp-trio": ([1.0, 1.0, 3.0, 1.0], [[0], [1, 2, 3]]),
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_logits_match_transformers(name: str, deep: Path, slice_cache: Path) -> None:
    speeds, groups = LAYOUTS[name]
    layout = layout_of(deep, speeds, groups)
    runner = run(deep, layout, slice_cache)
    try:
        got = LlmEngine(runner, runner.config).logits(list(IDS))
    finally:
        runner.close()
    ref = hf.reference_logits(deep, list(IDS))
    assert np.abs(got - ref).max() <= 1e-3
    assert [s.layers for s in layout.stages][-1][1] == 5


def test_stages_are_sized_by_speed(deep: Path) -> None:
    layout = layout_of(deep, [4.0, 1.0, 2.0], [[0], [1], [2]])
    assert [s.layers for s in layout.stages] == [(0, 3), (3, 4), (4, 5)]
    assert layout.strategy == "pipeline"
    # only the last stage holds the LM head; the others hold no vocabulary rows
    assert [s.plan.shares[0].n_vocab_rows for s in layout.stages] == [0, 0, 200]
    hybrid = layout_of(deep, [2.0, 1.0, 1.5], [[0, 1], [2]])
    assert hybrid.strategy == "hybrid"
    assert [len(s.plan.shares) for s in hybrid.stages] == [2, 1]


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral"])
def test_two_stage_pipeline_on_the_shared_checkpoints(
        kind: str, checkpoint: Callable[[str], Path],
        reference: Callable[[str, tuple[int, ...]], np.ndarray], slice_cache: Path) -> None:
    layout = layout_of(checkpoint(kind), [1.0, 3.0], [[0], [1]])
    runner = run(checkpoint(kind), layout, slice_cache)
    try:
        got = LlmEngine(runner, runner.config).logits(list(IDS))
    finally:
        runner.close()
    assert np.abs(got - reference(kind, IDS)).max() <= 1e-3


def test_greedy_equals_transformers_and_one_device(deep: Path, slice_cache: Path) -> None:
    prompt = [1, 40, 41, 42, 43]
    expected = hf.reference_greedy(deep, prompt, max_new_tokens=12)
    outs = []
    for speeds, groups in ([1.0], [[0]]), LAYOUTS["pipeline-3-unequal"], \
            LAYOUTS["hybrid-tp-pair-then-one"]:
        runner = run(deep, layout_of(deep, speeds, groups), slice_cache)
        try:
            outs.append(list(LlmEngine(runner, runner.config).generate(
                prompt, max_new_tokens=12).token_ids))
        finally:
            runner.close()
    assert outs == [expected] * 3


def window_budgets(deep: Path, layout: LlmLayout, slice_cache: Path) -> dict[str, int | None]:
    """Per device: its stage's KV cache, the activation reserve and its largest block."""
    probe = run(deep, layout, slice_cache)
    probe.close()
    return {share.device: ACTIVATION_RESERVE_BYTES + max(b.nbytes for b in w.blocks)
            + stage_kv_bytes(probe.config, share, MAX_CONTEXT)
            for stage in probe.stages for share, w in zip(stage.plan.shares, stage.workers,
                                                          strict=True)}


def test_a_memory_window_streams_each_stage_and_matches(deep: Path, slice_cache: Path) -> None:
    layout = layout_of(deep, *LAYOUTS["hybrid-tp-pair-then-one"])
    budgets = window_budgets(deep, layout, slice_cache)
    runner = run(deep, layout, slice_cache, memory_budgets=budgets)
    try:
        engine = LlmEngine(runner, runner.config)
        first, second = engine.logits(list(IDS)), engine.logits(list(IDS))
        stats = runner.stats()
    finally:
        runner.close()
    assert np.abs(first - hf.reference_logits(deep, list(IDS))).max() <= 1e-3
    np.testing.assert_array_equal(first, second)
    for st in stats:
        assert not st.resident and st.loads >= 2 * st.blocks
        assert st.peak_loaded_bytes <= st.budget_bytes
    # a stage's worker holds only its own layers' blocks (and the head only at the end)
    assert [s.layers for s in layout.stages] == [(0, 4), (4, 5)]
    assert [len(w.blocks) for s in runner.stages for w in s.workers] == [8, 8, 3]


def test_a_budget_below_one_block_is_refused(deep: Path, slice_cache: Path) -> None:
    layout = layout_of(deep, [1.0, 1.0], [[0], [1]])
    with pytest.raises(MemoryBudgetError, match="dev1"):
        run(deep, layout, slice_cache, memory_budgets={"dev1": ACTIVATION_RESERVE_BYTES})


@pytest.mark.parametrize("micro", [1, 2, 3])
def test_concurrent_sequences_in_micro_batches_equal_each_alone(
        micro: int, deep: Path, slice_cache: Path) -> None:
    layout = layout_of(deep, *LAYOUTS["pipeline-3-unequal"])
    prompts = [[1, 40, 41, 42, 43], [1, 7, 9], [1, 100, 101, 102], [1, 3]]
    alone = []
    single = run(deep, layout, slice_cache)
    try:
        for p in prompts:
            alone.append(LlmEngine(single, single.config).generate(p, 6, stop=[]).token_ids)
    finally:
        single.close()
    runner = run(deep, layout, slice_cache, slots=4, micro_batches=micro)
    try:
        feeds = {s: list(p) for s, p in enumerate(prompts)}
        starts = dict.fromkeys(feeds, 0)
        got: dict[int, list[int]] = {s: [] for s in feeds}
        for _ in range(6):
            items = [BatchItem(s, tuple(feeds[s]), starts[s]) for s in feeds]
            logits = runner.forward_batch(items)
            for s, row in zip(feeds, logits, strict=True):
                starts[s] += len(feeds[s])
                feeds[s] = [int(np.argmax(row))]
                got[s].append(feeds[s][0])
    finally:
        runner.close()
    assert [tuple(got[s]) for s in range(4)] == [tuple(a) for a in alone]


def test_a_prompt_cut_into_chunks_gives_every_tokens_logits(deep: Path,
                                                            slice_cache: Path) -> None:
    layout = layout_of(deep, *LAYOUTS["pipeline-3-unequal"])
    runner = run(deep, layout, slice_cache, micro_batches=3)
    try:
        every = runner.forward_batch([BatchItem(0, IDS, 0)], last_only=False)
        last = runner.forward_batch([BatchItem(0, IDS, 0)], last_only=True)
    finally:
        runner.close()
    ref = hf.reference_logits(deep, list(IDS))
    assert np.abs(every - ref).max() <= 1e-3
    assert np.abs(last - ref[-1:]).max() <= 1e-3


def test_a_stage_converts_and_keeps_only_its_layers(deep: Path, tmp_path: Path) -> None:
    from dataclasses import replace

    from edge_runtime.llm.share_weights import stage_blocks
    from edge_runtime.llm.slices import convert_share, load_slices, share_key

    layout = layout_of(deep, *LAYOUTS["pipeline-3-unequal"])
    ckpt = Checkpoint(deep)
    n = ckpt.config.layers
    keys = set()
    for stage in layout.stages:
        share = stage.plan.shares[0]
        first, end = stage.layers
        slices = convert_share(ckpt, share, tmp_path)
        on_disk = {p.name for p in slices.directory.glob("*.bin")}
        layers = {f"layer{i}.{part}.bin" for i in range(first, end) for part in ("attn", "mlp")}
        assert {f for f in on_disk if f.startswith("layer")} == layers
        assert any(f.startswith("head") for f in on_disk) == (end == n)
        # indexed by layer: the stage's blocks are where a whole share's would be
        reloaded = load_slices(slices.directory, expect=(ckpt.digest, share))
        held = stage_blocks(reloaded.blocks, (first, end), n)
        assert all(b.held and b.path.is_file() for b in held)
        assert [b.name for b in held[: 2 * (end - first)]] == [
            f"layer{i}.{part}" for i in range(first, end) for part in ("attn", "mlp")]
        assert not any(b.held for b in reloaded.blocks[: 2 * first])
        keys.add(share_key(ckpt.digest, share))
        # the same ranges over every layer are another conversion
        assert share_key(ckpt.digest, replace(share, layers=None)) not in keys
    assert len(keys) == len(layout.stages)
