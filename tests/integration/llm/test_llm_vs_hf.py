"""The LLM split over REAL agent processes against Hugging Face transformers.

1, 2 and 3 agents (equal shares from the agents' own profiles; unequal 3 : 1 : 1.5
shares from a given plan), all resident and with a window of two blocks streamed from
disk; Llama, Qwen2 (biases, tied embeddings) and Mistral (sliding window). fp32 logits
within 1e-3 of transformers, greedy generations equal to `generate(do_sample=False)`.
Every agent is a real `edge-runtime agent` subprocess; activations are summed by the
transports' star allreduce over CURVE-secured ZeroMQ on loopback.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import edge_runtime as er
from edge_runtime.llm import LocalRunner, RelativeSpeed
from edge_runtime.llm.local import kv_cache_bytes
from partitioner.tensor import ACTIVATION_RESERVE_BYTES, TensorPlan, plan_tensor_parallel

IDS = (1, 5, 17, 33, 99, 150, 7, 8, 9, 10, 11, 12, 3)
MAX_CONTEXT = 48
NEW_TOKENS = 12
UNEQUAL = [3.0, 1.0, 1.5]

Ref = Callable[[str, tuple[int, ...]], np.ndarray]
Greedy = Callable[[str, tuple[int, ...], int], list[int]]


def unequal_plan(ckpt: Path, names: list[str], weights: list[float],
                 budgets: list[int | None] | None = None) -> TensorPlan:
    """A plan as if the agents had these relative memory bandwidths."""
    from edge_runtime.llm import Checkpoint

    c = Checkpoint(ckpt)
    devices = [RelativeSpeed(n, w) for n, w in zip(names, weights, strict=True)]
    return plan_tensor_parallel(c.config.decoder_shape(MAX_CONTEXT), devices,
                                memory_budgets=budgets, streaming=True, model_digest=c.digest)


def two_block_budgets(ckpt: Path, plan: TensorPlan, tmp: Path) -> list[int | None]:
    """Budgets leaving each agent a window of two of its largest blocks."""
    probe = LocalRunner(ckpt, cache_dir=tmp, plan=plan, max_context=MAX_CONTEXT)
    probe.close()
    return [ACTIVATION_RESERVE_BYTES + kv_cache_bytes(probe.config, share, MAX_CONTEXT)
            + 2 * max(b.nbytes for b in w.blocks)
            for w, share in zip(probe.workers, plan.shares, strict=True)]


def check(llm: object, kind: str, reference: Ref, greedy: Greedy) -> None:
    assert isinstance(llm, er.LlmDeployment)
    got = llm.logits(list(IDS))
    ref = reference(kind, IDS)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-3
    gen = llm.generate(list(IDS[:6]), NEW_TOKENS)
    assert list(gen.token_ids) == greedy(kind, IDS[:6], NEW_TOKENS)


@pytest.mark.parametrize("layout", ["1", "2eq", "3eq", "3uneq"])
def test_llama_over_agents_matches_transformers(
    layout: str, cluster: er.LocalCluster, checkpoint: Callable[[str], Path],
    reference: Ref, greedy: Greedy,
) -> None:
    names = [a.name for a in cluster.agents][: int(layout[0])]
    plan = unequal_plan(checkpoint("llama"), names, UNEQUAL) if layout == "3uneq" else None
    llm = cluster.deploy_llm(checkpoint("llama"), max_context=MAX_CONTEXT, devices=names,
                             plan=plan)
    try:
        assert llm.agents == tuple(names)
        sizes = [s.weight_bytes for s in llm.plan.shares]
        if layout == "3uneq":
            assert sizes[0] > sizes[2] > sizes[1]
        check(llm, "llama", reference, greedy)
        status = llm.status()
        assert all(st["steps"] >= 2 and st["window"]["resident"] for st in status.values())
        # agents sharing this host split its cores instead of each running a full BLAS pool
        cores = cluster.agents[0].profile.cores
        want = None if len(names) == 1 else max(1, cores // len(names))
        assert all(st["blas_threads"] == want for st in status.values())
    finally:
        llm.unload()


def test_small_window_streams_and_matches(
    cluster: er.LocalCluster, checkpoint: Callable[[str], Path], reference: Ref,
    greedy: Greedy, tmp_path: Path,
) -> None:
    names = [a.name for a in cluster.agents]
    ckpt = checkpoint("llama")
    budgets = two_block_budgets(ckpt, unequal_plan(ckpt, names, UNEQUAL), tmp_path)
    plan = unequal_plan(ckpt, names, UNEQUAL, budgets)
    assert all(s.streaming for s in plan.shares)
    llm = cluster.deploy_llm(ckpt, max_context=MAX_CONTEXT, plan=plan, memory_budget=budgets)
    try:
        first = llm.logits(list(IDS))
        check(llm, "llama", reference, greedy)
        np.testing.assert_array_equal(llm.logits(list(IDS)), first)
        for name, st in llm.status().items():
            window = st["window"]
            assert not window["resident"], name
            assert window["loads"] >= 2 * window["blocks"]  # blocks were read again
            assert window["peak_loaded_bytes"] <= window["budget_bytes"]
    finally:
        llm.unload()


@pytest.mark.parametrize("kind, agents", [("qwen2", 2), ("mistral", 3)])
def test_other_architectures_match_transformers(
    kind: str, agents: int, cluster: er.LocalCluster, checkpoint: Callable[[str], Path],
    reference: Ref, greedy: Greedy,
) -> None:
    names = [a.name for a in cluster.agents][:agents]
    llm = cluster.deploy_llm(checkpoint(kind), max_context=MAX_CONTEXT, devices=names)
    try:
        check(llm, kind, reference, greedy)
    finally:
        llm.unload()


def test_stream_yields_tokens_as_they_are_produced(
    cluster: er.LocalCluster, checkpoint: Callable[[str], Path], greedy: Greedy,
) -> None:
    llm = cluster.deploy_llm(checkpoint("llama"), max_context=MAX_CONTEXT)
    try:
        # step by step, the stream is driven lazily: only the prefill has run when the
        # first token is read
        llm.runner.decode_on_agents = False
        stream = llm.generate(list(IDS[:6]), NEW_TOKENS, stream=True)
        first = next(stream)
        assert all(st["steps"] == 1 for st in llm.status().values())
        events = [first, *stream]
        llm.runner.decode_on_agents = True
        # decoding on the agents, each token is read as its answer arrives, while the
        # agents go on: the first comes well before the last
        ran = list(llm.generate(list(IDS[:6]), NEW_TOKENS, stream=True))
        for got in (events, ran):
            assert [e.index for e in got] == list(range(len(got)))
            assert all(a.seconds <= b.seconds for a, b in itertools.pairwise(got))
            assert [e.token_id for e in got] == greedy("llama", IDS[:6], NEW_TOKENS)
        assert ran[0].seconds < ran[-1].seconds
        sampled = [llm.generate(list(IDS[:6]), 8, temperature=0.9, top_k=20, top_p=0.9,
                                seed=7).token_ids for _ in range(2)]
        assert sampled[0] == sampled[1]  # seeded sampling is reproducible across steps
    finally:
        llm.unload()


def test_emulated_presets_get_shares_by_their_profiles(
    checkpoint: Callable[[str], Path], reference: Ref, greedy: Greedy,
) -> None:
    """A Pi-like agent reports the preset's memory bandwidth, so it gets the smaller share;
    the split stays exact (its compute is dilated, not changed)."""
    with er.local_cluster(2, presets=["raspberry-pi-4", None]) as local:
        pi, host = local.agents
        assert pi.profile.mem_bandwidth_gbps < host.profile.mem_bandwidth_gbps
        llm = local.deploy_llm(checkpoint("llama"), max_context=MAX_CONTEXT)
        small, large = llm.plan.shares
        assert small.device == pi.name and small.weight_bytes < large.weight_bytes
        check(llm, "llama", reference, greedy)
