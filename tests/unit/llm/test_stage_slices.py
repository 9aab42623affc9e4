"""Each pipeline stage converts only what it uses (`slices.convert_share`).

The embedding table is written only for the stage that embeds token ids (the first; a
whole tensor-parallel share too), the final norm and LM head only for the last: a
three-stage layout's cache directories hold one embedding file and one set of head
chunks, and the logits still equal transformers'. A tied LM head (Qwen2) is cut from
the checkpoint's embedding into the last stage's head chunks, so that stage needs no
embedding file either. A manifest of a first stage that names no embedding is refused
and converted again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.errors import CheckpointError
from edge_runtime.llm import Checkpoint, LlmEngine, RelativeSpeed
from edge_runtime.llm.pipeline import PipelineRunner
from edge_runtime.llm.slices import convert_share, load_slices
from partitioner.llm_layout import LlmLayout
from partitioner.llm_pipeline import plan_llm_layout

IDS = (1, 5, 17, 33, 99, 150, 7, 8, 9, 10, 11, 12, 3)
MAX_CONTEXT = 48


def layout_of(directory: Path, groups: Sequence[Sequence[int]]) -> LlmLayout:
    n = sum(len(g) for g in groups)
    config = Checkpoint(directory).config
    return plan_llm_layout(config.decoder_shape(MAX_CONTEXT),
                           [RelativeSpeed(f"dev{i}", 1.0) for i in range(n)], groups)


def converted(cache: Path) -> dict[tuple[int, int], set[str]]:
    """Each converted share's files, by the layer range its manifest names."""
    out = {}
    for manifest in cache.glob("*/manifest.json"):
        layers = json.loads(manifest.read_text())["share"]["layers"]
        out[tuple(layers)] = {p.name for p in manifest.parent.iterdir()}
    return out


@pytest.mark.parametrize("kind", ["llama", "qwen2"])  # qwen2: tied LM head
def test_only_the_first_stage_holds_the_embedding(
        kind: str, checkpoint: Callable[[str], Path],
        reference: Callable[[str, tuple[int, ...]], np.ndarray], tmp_path: Path) -> None:
    directory = checkpoint(kind)
    layout = layout_of(directory, [[0], [1]])
    assert Checkpoint(directory).config.tie_word_embeddings == (kind == "qwen2")
    runner = PipelineRunner(directory, layout, cache_dir=tmp_path, max_context=MAX_CONTEXT)
    try:
        got = LlmEngine(runner, runner.config).logits(list(IDS))
        first, last = (s.workers[0] for s in runner.stages)
        assert first.embedding.shape[0] == runner.config.vocab
        assert last.embedding.shape[0] == 0  # never converted, never read
    finally:
        runner.close()
    assert np.abs(got - reference(kind, IDS)).max() <= 1e-3
    files = converted(tmp_path)
    assert sorted(files) == [(0, 1), (1, 2)]
    assert "embedding.f32" in files[(0, 1)] and "embedding.f32" not in files[(1, 2)]
    assert not any(f.startswith("head") for f in files[(0, 1)])
    assert "head0.bin" in files[(1, 2)]


def test_a_middle_stage_holds_neither_end(tmp_path: Path) -> None:
    from edge_runtime.llm.synthetic import SyntheticShape, write_synthetic_checkpoint

    shape = SyntheticShape(hidden=64, intermediate=128, layers=3, heads=4, kv_heads=2,
                           vocab=300)
    directory = write_synthetic_checkpoint(tmp_path / "ckpt", shape)
    layout = layout_of(directory, [[0], [1], [2]])
    ckpt = Checkpoint(directory)
    middle = layout.stages[1].plan.shares[0]
    slices = convert_share(ckpt, middle, tmp_path / "cache")
    assert slices.embedding is None
    assert {p.name for p in slices.directory.iterdir()} == {
        "manifest.json", "layer1.attn.bin", "layer1.mlp.bin"}
    assert slices.embedding_table().shape == (0, 64)


def test_a_first_stage_manifest_without_embedding_is_converted_again(
        checkpoint: Callable[[str], Path], tmp_path: Path) -> None:
    ckpt = Checkpoint(checkpoint("llama"))
    share = layout_of(ckpt.directory, [[0], [1]]).stages[0].plan.shares[0]
    slices = convert_share(ckpt, share, tmp_path)
    assert slices.embedding is not None
    manifest = slices.directory / "manifest.json"
    doc = json.loads(manifest.read_text())
    doc["embedding"] = doc["embedding_sha256"] = None
    manifest.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="no embedding"):
        load_slices(slices.directory)
    again = convert_share(ckpt, share, tmp_path)
    assert again.embedding is not None and again.embedding.is_file()
    assert again.embedding_table().shape == (ckpt.config.vocab, ckpt.config.hidden)
