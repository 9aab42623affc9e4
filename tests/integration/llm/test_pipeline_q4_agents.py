"""4-bit pipeline and hybrid layouts (`deploy_llm(..., quantize="q4")`) over REAL agents.

The trained tinylm checkpoint over the shared three CURVE-secured agents: a 2-stage
pipeline and a hybrid (a tensor pair, then one agent), each stage's shares 4-bit on
its agents. References, as in test_llm_q4.py: transformers' fp32 logits within the
existing q4 tests' 0.5 x the logits' standard deviation; the same layout in one process
(`llm.pipeline.PipelineRunner(quantize="q4")`) within their 0.05 x (a pipeline of one
share per stage has no partial sums: equal); and greedy texts equal to both that and
the 4-bit tensor-parallel deployment on two agents (shares split equally, so their
rounding is the one the in-process tests compare with, tests/unit/llm/test_pipeline_q4.py).

Through agents too, each stage converts only what it uses: the agents' cache
directories hold the embedding only on the first stage (tied LM heads included).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

import edge_runtime as er
import support.hf_checkpoints as hf
from edge_runtime.llm import Checkpoint, LlmTokenizer, RelativeSpeed
from edge_runtime.llm.pipeline import PipelineRunner
from edge_runtime.sdk.llm_q4 import Q4_NOTE
from partitioner.llm_layout import LlmLayout
from partitioner.llm_pipeline import plan_llm_layout
from partitioner.tensor import plan_tensor_parallel

TINYLM = Path(__file__).resolve().parents[3] / "examples" / "tinylm" / "checkpoint"
MAX_CONTEXT = 128
PROMPTS = ("Permission is hereby granted", "THE SOFTWARE IS PROVIDED")
NEW_TOKENS = 24
LAYOUTS = {"pipeline": [[0], [1]], "hybrid": [[0, 1], [2]]}


def names_of(cluster: er.LocalCluster) -> list[str]:
    return [a.name for a in cluster.agents]


def layout_for(names: Sequence[str], groups: Sequence[Sequence[int]]) -> LlmLayout:
    ckpt = Checkpoint(TINYLM)
    return plan_llm_layout(ckpt.config.decoder_shape(MAX_CONTEXT),
                           [RelativeSpeed(n, 1.0) for n in names], groups,
                           model_digest=ckpt.digest)


def prompt_ids() -> list[list[int]]:
    tokenizer = LlmTokenizer.from_checkpoint(TINYLM)
    return [list(tokenizer.encode(p)) for p in PROMPTS]


def long_ids() -> list[int]:
    return prompt_ids()[0] + list(range(97, 123)) * 2


@pytest.fixture(scope="module")
def tensor_q4(cluster: er.LocalCluster) -> Iterator[list[list[int]]]:
    """The greedy texts of the 4-bit tensor-parallel deployment on two agents."""
    ckpt = Checkpoint(TINYLM)
    names = names_of(cluster)[:2]
    plan = plan_tensor_parallel(ckpt.config.decoder_shape(MAX_CONTEXT),
                                [RelativeSpeed(n, 1.0) for n in names], streaming=True,
                                model_digest=ckpt.digest)
    llm = cluster.deploy_llm(TINYLM, plan=plan, max_context=MAX_CONTEXT, quantize="q4")
    try:
        yield [list(llm.generate(ids, NEW_TOKENS, stop=[]).token_ids) for ids in prompt_ids()]
    finally:
        llm.unload()


@pytest.mark.parametrize("kind", sorted(LAYOUTS))
def test_q4_layouts_over_agents(kind: str, cluster: er.LocalCluster,
                                tensor_q4: list[list[int]], tmp_path: Path) -> None:
    groups = LAYOUTS[kind]
    names = names_of(cluster)[:sum(len(g) for g in groups)]
    layout = layout_for(names, groups)
    llm = cluster.deploy_llm(TINYLM, layout=layout, max_context=MAX_CONTEXT, quantize="q4")
    try:
        assert llm.layout is not None and llm.layout.strategy == kind
        for stage, planned in zip(llm.layout.stages, layout.stages, strict=True):
            assert Q4_NOTE in stage.plan.notes and stage.layers == planned.layers
            for q4, fp32 in zip(stage.plan.shares, planned.plan.shares, strict=True):
                assert (q4.kv_heads, q4.mlp_columns, q4.vocab_rows) == (
                    fp32.kv_heads, fp32.mlp_columns, fp32.vocab_rows)
                assert 0.15 * fp32.weight_bytes < q4.weight_bytes < 0.3 * fp32.weight_bytes
        got = llm.logits(long_ids())
        texts = [list(llm.generate(ids, NEW_TOKENS, stop=[]).token_ids)
                 for ids in prompt_ids()]
        status = llm.status()
    finally:
        llm.unload()
    assert all(st["type"] == "llm-stage" and st["quantize"] == "q4"
               and st["window"]["resident"] for st in status.values())
    local = PipelineRunner(TINYLM, layout, cache_dir=tmp_path, max_context=MAX_CONTEXT,
                           quantize="q4")
    try:
        in_process = local.forward(long_ids(), 0, last_only=False)
    finally:
        local.close()
    fp32 = hf.reference_logits(TINYLM, long_ids())
    spread = float(fp32.std())
    assert 0 < np.abs(got - fp32).max() <= 0.5 * spread
    assert np.abs(got - in_process).max() <= 0.05 * spread
    if kind == "pipeline":
        np.testing.assert_array_equal(got, in_process)
    assert texts == tensor_q4


def test_a_stage_over_its_4bit_budget_streams_int8_as_planned(cluster: er.LocalCluster,
                                                               tmp_path: Path) -> None:
    """The last stage's budget is below its 4-bit loading peak (69.6 MB as planned) but
    holds the KV cache, activations and largest fp32 block: the plan streams int8 blocks
    there (its note says so), the agent does, and so does the same layout in process
    under the same budgets (one share per stage: equal logits)."""
    from edge_runtime.sdk.llm_q4 import Q4_STREAM_NOTE

    names = names_of(cluster)[:2]
    layout = layout_for(names, LAYOUTS["pipeline"])
    budgets = [None, 40_000_000]
    llm = cluster.deploy_llm(TINYLM, layout=layout, max_context=MAX_CONTEXT, quantize="q4",
                             memory_budget=budgets)
    try:
        assert llm.layout is not None
        first, last = (s.plan.shares[0] for s in llm.layout.stages)
        assert not first.streaming and last.streaming and last.peak_memory_bytes == budgets[1]
        assert any(Q4_STREAM_NOTE in note for note in llm.layout.stages[1].plan.notes)
        got = llm.logits(long_ids())
    finally:
        llm.unload()
    local = PipelineRunner(TINYLM, layout, cache_dir=tmp_path, max_context=MAX_CONTEXT,
                           quantize="q4", memory_budgets=dict(zip(names, budgets, strict=True)))
    try:
        workers = [w for stage in local.stages for w in stage.workers]
        assert workers[0].window is None and workers[1].window is not None  # int8 blocks
        in_process = local.forward(long_ids(), 0, last_only=False)
    finally:
        local.close()
    np.testing.assert_array_equal(got, in_process)
    fp32 = hf.reference_logits(TINYLM, long_ids())
    assert 0 < np.abs(got - fp32).max() <= 0.5 * float(fp32.std())


def test_a_q4_pipeline_strategy_and_auto_deploy(cluster: er.LocalCluster) -> None:
    """strategy="pipeline" plans its own 4-bit layout (it was refused before); "auto"
    keeps its choice among every layout, its figures the 4-bit ones."""
    names = names_of(cluster)[:2]
    llm = cluster.deploy_llm(TINYLM, strategy="pipeline", max_context=MAX_CONTEXT,
                             quantize="q4", devices=names)
    try:
        assert llm.layout is not None and llm.layout.strategy == "pipeline"
        assert all(st["quantize"] == "q4" for st in llm.status().values())
        text = llm.generate(prompt_ids()[0], 8, stop=[]).token_ids
    finally:
        llm.unload()
    assert len(text) == 8
    auto = cluster.deploy_llm(TINYLM, strategy="auto", max_context=MAX_CONTEXT, quantize="q4")
    try:
        layout = auto.layout
        assert layout is not None
        predicted = {p.strategy: p for p in layout.predictions}
        assert predicted["pipeline"].feasible and predicted["hybrid"].feasible
        assert predicted[layout.strategy].s_per_token == layout.predicted_s_per_token
        assert all(Q4_NOTE in stage.plan.notes for stage in layout.stages)
        assert auto.quantize == "q4"
    finally:
        auto.unload()


def test_agents_convert_the_embedding_only_for_the_first_stage(
        checkpoint: object, tmp_path: Path) -> None:
    """qwen2: a tied LM head, cut from the embedding into the last stage's head chunks."""
    assert callable(checkpoint)
    directory = checkpoint("qwen2")
    ids = [1, 5, 17, 33, 99, 150, 7, 8]
    caches = [tmp_path / "c0", tmp_path / "c1"]
    with er.local_cluster(2, log_level="WARNING", cache_dirs=caches) as pair:
        config = Checkpoint(directory).config
        layout = plan_llm_layout(config.decoder_shape(48),
                                 [RelativeSpeed(a.name, 1.0) for a in pair.agents],
                                 [[0], [1]], model_digest=Checkpoint(directory).digest)
        llm = pair.deploy_llm(directory, layout=layout, max_context=48)
        try:
            got = llm.logits(ids)
            text = list(llm.generate(ids[:4], 6).token_ids)
        finally:
            llm.unload()
    assert np.abs(got - hf.reference_logits(directory, ids)).max() <= 1e-3
    assert text == hf.reference_greedy(directory, ids[:4], 6)
    first, last = ({p.name for p in c.glob("llm/*/*")} for c in caches)
    assert "embedding.f32" in first and "manifest.json" in first
    assert "embedding.f32" not in last and "head0.bin" in last and "manifest.json" in last
