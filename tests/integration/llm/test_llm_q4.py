"""4-bit weights (`deploy_llm(..., quantize="q4")`) through REAL agent processes.

The trained tinylm checkpoint (a real next-byte model, so greedy choices mean something)
over 2 CURVE-secured agents, fp32 and 4-bit side by side on the same agents. 4-bit
weights are an approximation, so the references are: the fp32 deployment (logits
within a tolerance set from measurement, greedy choices mostly equal) and the same
4-bit split run in one process (`LocalRunner`, same kernels: nearly equal).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

import edge_runtime as er
from edge_runtime.errors import ConfigError
from edge_runtime.llm import LocalRunner

TINYLM = Path(__file__).resolve().parents[3] / "examples" / "tinylm" / "checkpoint"
MAX_CONTEXT = 128
PROMPTS = ("Permission is hereby granted", "The above copyright notice",
           "THE SOFTWARE IS PROVIDED", "Redistribution and use in source")
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def pair(cluster: er.LocalCluster) -> Iterator[tuple[er.LlmDeployment, er.LlmDeployment]]:
    """fp32 and 4-bit deployments of tinylm on the same two agents."""
    names = [a.name for a in cluster.agents][:2]
    fp32 = cluster.deploy_llm(TINYLM, max_context=MAX_CONTEXT, devices=names)
    try:
        q4 = cluster.deploy_llm(TINYLM, max_context=MAX_CONTEXT, devices=names, quantize="q4")
        try:
            yield fp32, q4
        finally:
            q4.unload()
    finally:
        fp32.unload()


def test_q4_plan_and_status_describe_4bit_shares(
    pair: tuple[er.LlmDeployment, er.LlmDeployment],
) -> None:
    fp32, q4 = pair
    assert q4.quantize == "q4" and fp32.quantize is None
    assert "4-bit weights" in q4.describe() and "fp32 weights" in fp32.describe()
    for a, b in zip(fp32.plan.shares, q4.plan.shares, strict=True):
        # the same split; 4-bit bytes: 0.625/4 of the matrices whose input size is a
        # multiple of 32 (tinylm's o_proj input, 80, is not: it stays fp32)
        assert (a.kv_heads, a.mlp_columns, a.vocab_rows) == (b.kv_heads, b.mlp_columns,
                                                             b.vocab_rows)
        assert 0.15 * a.weight_bytes < b.weight_bytes < 0.3 * a.weight_bytes
        assert b.compute_s_per_token < a.compute_s_per_token and not b.streaming
    assert q4.plan.predicted_s_per_token < 0.3 * fp32.plan.predicted_s_per_token
    held = {}
    for name, st in q4.status().items():
        assert st["quantize"] == "q4" and st["window"]["resident"], name
        held[name] = st["window"]["budget_bytes"]  # bytes of weights the agent holds
    for name, st in fp32.status().items():
        assert st["quantize"] is None
        assert held[name] < 0.3 * st["window"]["budget_bytes"], name


def test_q4_logits_track_fp32_and_equal_the_in_process_split(
    pair: tuple[er.LlmDeployment, er.LlmDeployment], tmp_path: Path,
) -> None:
    """Tolerances from measurement on tinylm (2 agents, 76-token sequences): the largest
    |q4 - fp32| logit error was 0.25-0.28 of the fp32 logits' standard deviation (the
    spread that separates tokens), so 0.5 x std bounds it with margin while still failing
    for a broken kernel or a mis-scaled block (errors of the order of the spread). The
    agents' 4-bit logits equalled the in-process 4-bit split to 4e-6 on most sequences
    and 0.026 (0.8 % of std) on others: the kernel quantises activations to int8, and the
    allreduce's summation order can move a value across a rounding step; 0.05 x std."""
    fp32, q4 = pair
    local = LocalRunner(TINYLM, cache_dir=tmp_path, plan=q4.plan, max_context=MAX_CONTEXT,
                        quantize="q4")
    tokenizer = fp32.engine.tokenizer
    assert tokenizer is not None
    try:
        for prompt in PROMPTS[:2]:
            ids = list(tokenizer.encode(prompt)) + list(range(97, 123)) * 2
            a, b = fp32.logits(ids), q4.logits(ids)
            spread = float(a.std())
            assert np.abs(a - b).max() <= 0.5 * spread
            assert np.abs(a - b).max() > 0  # really 4-bit, not the fp32 share
            in_process = local.forward(ids, 0, last_only=False)
            assert np.abs(b - in_process).max() <= 0.05 * spread
    finally:
        local.close()


def test_q4_greedy_generation_mostly_agrees_with_fp32(
    pair: tuple[er.LlmDeployment, er.LlmDeployment],
) -> None:
    """Greedy choices compared position by position along fp32's own continuation
    (teacher forcing; free-running texts diverge for good after the first near-tie).
    Measured: 0.97 of 120 choices agreed (0.9-1.0 per prompt); asserted: 0.85 overall."""
    fp32, q4 = pair
    tokenizer = fp32.engine.tokenizer
    assert tokenizer is not None
    agree = total = 0
    for prompt in PROMPTS:
        ids = list(tokenizer.encode(prompt))
        generated = fp32.generate(ids, NEW_TOKENS)
        seq = ids + list(generated.token_ids)
        choices = q4.logits(seq)[len(ids) - 1 : -1].argmax(axis=1)
        agree += int((choices == np.array(generated.token_ids)).sum())
        total += len(generated.token_ids)
    assert agree >= 0.85 * total, f"{agree}/{total}"
    text = q4.generate(PROMPTS[0], NEW_TOKENS).text
    assert len(text) > 0 and sum(ch.isalpha() for ch in text) >= NEW_TOKENS // 2


def test_q4_budgets(cluster: er.LocalCluster,
                    pair: tuple[er.LlmDeployment, er.LlmDeployment]) -> None:
    """An unknown format is a ConfigError before any agent loads; a budget that holds the
    4-bit share (as the plan reserves it: codes, onnxruntime's packed copy and the load
    peak) serves it resident. Budgets below it stream int8 blocks
    (`test_int8_stream_agents.py`)."""
    _, q4 = pair
    names = list(q4.agents)
    q4_need = max(s.peak_memory_bytes for s in q4.plan.shares)
    before = {n: set(st["deployments"]) for n, st in cluster.status().items()}

    def loaded() -> dict[str, set[str]]:
        return {n: set(st["deployments"]) for n, st in cluster.status().items()}

    with pytest.raises(ConfigError, match="quantize='q8'"):
        cluster.deploy_llm(TINYLM, max_context=MAX_CONTEXT, devices=names, quantize="q8")
    assert loaded() == before
    llm = cluster.deploy_llm(TINYLM, max_context=MAX_CONTEXT, devices=names, quantize="q4",
                             memory_budget=q4_need)
    try:
        assert all(st["window"]["resident"] for st in llm.status().values())
        ids = list(range(97, 123))
        ref = q4.logits(ids)  # same split and kernels (int8 rounding: see the test above)
        assert np.abs(llm.logits(ids) - ref).max() <= 0.05 * float(ref.std())
    finally:
        llm.unload()
    assert loaded() == before



@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_sdk_4bit_estimates_bound_the_engine(kind: str, checkpoint: Callable[[str], Path],
                                             tmp_path: Path) -> None:
    """The SDK refuses a 4-bit budget before deploying, by the engine's rule computed from
    the plan alone; so its estimate of the converted blocks must never be below what the
    agent converts (else the agent, not the SDK, would refuse), yet stay close to it.
    Real conversions and 4-bit kernels of unequal 3-way splits, biases included."""
    from edge_runtime.llm import Checkpoint, RelativeSpeed
    from edge_runtime.sdk.llm_plan import fp32_block_bytes, q4_weight_bytes, quantize_plan
    from partitioner.tensor import plan_tensor_parallel

    ckpt = Checkpoint(checkpoint(kind))
    devices = [RelativeSpeed("a", 3.0), RelativeSpeed("b", 1.0), RelativeSpeed("c", 1.5)]
    plan = plan_tensor_parallel(ckpt.config.decoder_shape(32), devices, streaming=True)
    q4_plan = quantize_plan(plan, devices)
    assert quantize_plan(q4_plan, devices) is q4_plan  # not rescaled twice
    runner = LocalRunner(ckpt, cache_dir=tmp_path, plan=plan, max_context=32, quantize="q4")
    try:
        for share, q4_share, worker in zip(plan.shares, q4_plan.shares, runner.workers,
                                           strict=True):
            blocks, largest = fp32_block_bytes(plan.shape, share)
            real = [b.nbytes for b in worker.blocks]
            assert sum(real) <= blocks <= sum(real) * 1.02 + 4096
            assert max(real) <= largest
            held = worker.stats().budget_bytes  # 4-bit kernels + fp32 vectors, as loaded
            assert q4_weight_bytes(plan.shape, share) == q4_share.weight_bytes
            assert q4_share.weight_bytes <= held <= q4_share.weight_bytes + 0.05 * sum(real)
    finally:
        runner.close()
