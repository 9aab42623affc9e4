"""Pipeline and hybrid LLM layouts over REAL agent processes against transformers.

Three `edge-runtime agent` subprocesses (the shared CURVE cluster); layer ranges of
unequal sizes, one per agent (pipeline) or a tensor pair plus one agent (hybrid); the
hidden states go agent to agent over the agents' control sockets, the last stage's
hub answers. fp32 logits within 1e-3 of transformers, greedy generations equal to
`generate(do_sample=False)`, with a layer window streamed from disk, and with several
sequences batched by the scheduler and cut into micro-batches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

import edge_runtime as er
import support.hf_checkpoints as hf
from edge_runtime.llm import Checkpoint, Generation, RelativeSpeed
from edge_runtime.llm.pipeline import PipelineRunner, stage_kv_bytes
from edge_runtime.sdk.scheduler import GenerationScheduler
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


def layout_for(directory: Path, names: Sequence[str], speeds: Sequence[float],
               groups: Sequence[Sequence[int]], max_batch: int = 1) -> LlmLayout:
    """A layout as if the agents had these relative memory bandwidths."""
    ckpt = Checkpoint(directory)
    devices = [RelativeSpeed(n, s) for n, s in zip(names, speeds, strict=True)]
    return plan_llm_layout(ckpt.config.decoder_shape(MAX_CONTEXT * max_batch), devices, groups,
                           model_digest=ckpt.digest)


def names_of(cluster: er.LocalCluster) -> list[str]:
    return [a.name for a in cluster.agents]


@pytest.mark.parametrize("groups", [[[0], [1], [2]], [[0, 1], [2]]], ids=["pipeline", "hybrid"])
def test_layouts_over_agents_match_transformers(
        groups: list[list[int]], cluster: er.LocalCluster, deep: Path) -> None:
    layout = layout_for(deep, names_of(cluster), [4.0, 1.0, 2.0], groups)
    llm = cluster.deploy_llm(deep, layout=layout, max_context=MAX_CONTEXT)
    try:
        assert llm.layout is not None and llm.layout.strategy == layout.strategy
        assert llm.agents == tuple(names_of(cluster))
        got = llm.logits(list(IDS))
        assert np.abs(got - hf.reference_logits(deep, list(IDS))).max() <= 1e-3
        gen = llm.generate(list(IDS[:6]), 10)
        assert list(gen.token_ids) == hf.reference_greedy(deep, list(IDS[:6]), 10)
        status = llm.status()
        layers = [tuple(st["layers"]) for st in status.values()]
        assert layers[-1] == layout.stages[-1].layers and layers[0][0] == 0
        assert all(st["type"] == "llm-stage" and st["steps"] >= 2 for st in status.values())
        assert llm.hub_agent == layout.stages[-1].devices[layout.stages[-1].plan.hub]
        assert "stage 0 layers 0.." in llm.describe()
    finally:
        llm.unload()


def test_a_memory_window_streams_on_every_stage(cluster: er.LocalCluster, deep: Path,
                                                tmp_path: Path) -> None:
    names = names_of(cluster)
    layout = layout_for(deep, names, [1.0, 1.0, 1.0], [[0], [1], [2]])
    probe = PipelineRunner(deep, layout, cache_dir=tmp_path, max_context=MAX_CONTEXT)
    probe.close()
    budgets = [ACTIVATION_RESERVE_BYTES + max(b.nbytes for b in w.blocks)
               + stage_kv_bytes(probe.config, stage.plan.shares[0], MAX_CONTEXT)
               for stage in probe.stages for w in stage.workers]
    llm = cluster.deploy_llm(deep, layout=layout, max_context=MAX_CONTEXT,
                             memory_budget=budgets)
    try:
        first, second = llm.logits(list(IDS)), llm.logits(list(IDS))
        status = llm.status()
    finally:
        llm.unload()
    assert np.abs(first - hf.reference_logits(deep, list(IDS))).max() <= 1e-3
    np.testing.assert_array_equal(first, second)
    for st in status.values():
        assert not st["window"]["resident"]
        assert st["window"]["loads"] >= 2 * st["window"]["blocks"]


def test_concurrent_sequences_in_micro_batches_equal_each_alone(
        cluster: er.LocalCluster, deep: Path) -> None:
    prompts = [[1, 40, 41, 42, 43], [1, 7, 9], [1, 100, 101, 102], [1, 3]]
    alone = [hf.reference_greedy(deep, p, 6) for p in prompts]
    layout = layout_for(deep, names_of(cluster), [4.0, 1.0, 2.0], [[0], [1], [2]], max_batch=4)
    layout = dataclasses.replace(layout, micro_batches=3)  # decode steps cut in three too
    llm = cluster.deploy_llm(deep, layout=layout, max_context=MAX_CONTEXT, max_batch=4)
    try:
        scheduler = GenerationScheduler(llm).start()
        try:
            outs = scheduler.generate_many(prompts, 6)
        finally:
            scheduler.close()
        assert llm.runner.last_step["micro_batches"] == 3
        steps = [st["steps"] for st in llm.status().values()]
    finally:
        llm.unload()
    assert [list(o.token_ids) for o in outs] == alone
    assert min(steps) > 6  # micro-batches: more stage steps than scheduler steps


def test_auto_chooses_and_keeps_every_prediction(cluster: er.LocalCluster, deep: Path) -> None:
    llm = cluster.deploy_llm(deep, strategy="auto", max_context=MAX_CONTEXT)
    try:
        layout = llm.layout
        assert layout is not None
        assert [p.strategy for p in layout.predictions] == ["single", "tensor", "pipeline",
                                                            "hybrid"]
        assert layout.reason.startswith("best latency: " + layout.strategy)
        got = llm.logits(list(IDS))
    finally:
        llm.unload()
    assert np.abs(got - hf.reference_logits(deep, list(IDS))).max() <= 1e-3


def test_emulated_links_slow_every_hop_and_keep_the_numbers(cluster: er.LocalCluster,
                                                            deep: Path) -> None:
    """Two stages whose agents send over an emulated 20 ms link (benchmarks): a decode
    step crosses it twice (stage to stage, last stage to the coordinator)."""
    from edge_runtime.sdk.llm import LlmDeployment
    from edge_runtime.sdk.llm_pipeline_place import place_pipeline
    from edge_runtime.sdk.llm_place import LlmSource

    names = names_of(cluster)[:2]
    layout = layout_for(deep, names, [1.0, 1.0], [[0], [1]])
    ckpt = Checkpoint(deep)
    source = LlmSource(deep, ckpt.config, ckpt.digest, dict.fromkeys(names), MAX_CONTEXT,
                       None, 1, False, None, None, tuple(names))
    llm = LlmDeployment(cluster, source,
                        place_pipeline(cluster, source, layout, emulate=(0.02, None)), None)
    try:
        gen = llm.generate(list(IDS[:6]), 4)
        got = llm.logits(list(IDS))
    finally:
        llm.unload()
    assert gen.s_per_token >= 0.04
    assert list(gen.token_ids) == hf.reference_greedy(deep, list(IDS[:6]), 4)
    assert np.abs(got - hf.reference_logits(deep, list(IDS))).max() <= 1e-3


def test_generate_cli_with_a_pipeline(deep: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "edge_runtime.cli.main", "generate", str(deep), "--local", "2",
         "--strategy", "pipeline", "--ids", "1,40,41,42,43", "--max-new-tokens", "6",
         "--max-context", "64"], capture_output=True, text=True, timeout=180, check=False)
    assert out.returncode == 0, out.stderr
    assert "pipeline over 2 agent(s) in 2 stages" in out.stderr
    want = hf.reference_greedy(deep, [1, 40, 41, 42, 43], 6)
    assert out.stdout.splitlines()[0].split() == [str(t) for t in want]


def test_a_stage_killed_mid_stream_fails_over_and_the_stream_goes_on(deep: Path) -> None:
    """The middle stage's agent SIGKILLed after 5 tokens: the loss is found, the
    checkpoint is placed again (tensor-parallel) over the two survivors, every sequence
    is replayed, and the stream equals the uninterrupted one."""
    from edge_runtime.sdk.config import Timeouts

    fast = Timeouts(request_s=10.0, heartbeat_interval_s=0.25, heartbeat_timeout_s=1.0)
    prompt = [1, 5, 17, 33, 99, 150]
    with er.local_cluster(3, timeouts=fast) as trio:
        layout = layout_for(deep, names_of(trio), [1.0, 1.0, 1.0], [[0], [1], [2]])
        llm = trio.deploy_llm(deep, layout=layout, max_context=MAX_CONTEXT)
        expected = llm.generate(prompt, 14, stop=[]).token_ids
        victim = layout.stages[1].devices[0]
        trio.link(victim).alive = None  # found on the wire, as with connect()
        stream = llm.generate(prompt, 14, stream=True, stop=[])
        assert not isinstance(stream, Generation)
        ids = [next(stream).token_id for _ in range(5)]
        trio.processes[[p.name for p in trio.processes].index(victim)].kill()
        ids += [event.token_id for event in stream]
        assert ids == list(expected)
        assert llm.failovers == 1 and victim not in llm.agents


def test_a_stage_refuses_a_decode_run_and_keeps_serving(cluster: er.LocalCluster,
                                                        deep: Path) -> None:
    """A pipelined LLM answers logits step by step (the coordinator samples): an
    `llm_step` asking its first stage for a decode run is refused with a typed error,
    and the next generation is served unchanged."""
    from edge_runtime.protocol import LlmStep, StepSampling
    from transports.wire import Frame

    layout = layout_for(deep, names_of(cluster), [1.0, 1.0, 1.0], [[0], [1], [2]])
    llm = cluster.deploy_llm(deep, layout=layout, max_context=MAX_CONTEXT)
    try:
        before = llm.generate(list(IDS[:4]), 4).token_ids
        first = cluster.link(layout.stages[0].devices[0])
        step = LlmStep(llm.id, sampling=(StepSampling(),), decode_tokens=3)
        answer: Frame = cluster.hub.request(first, step.KIND, step.to_meta(),
                                            {"ids": np.array([1, 5], dtype=np.int64)})
        assert answer.is_error and answer.meta["error_type"] == "InputError"
        assert "decode_tokens" in answer.meta["message"]
        assert llm.generate(list(IDS[:4]), 4).token_ids == before
    finally:
        llm.unload()
