"""The plan of a 4-bit pipeline or hybrid: each stage charged for what it holds.

`partitioner.llm_pipeline` applies the SDK's 4-bit rule (`llm_q4.quantize_plan`, the one
tensor-parallel plans use) to each stage on the stage's own shape, so a stage's 4-bit
bytes and peak memory count its layers' weights and KV cache only and the LM head only
on the last stage: one share per stage sums to exactly the single device's 4-bit bytes
and KV cache. The predicted time is the cost model's over those bytes; a budget below a
stage's 4-bit loading peak streams int8 blocks, as a tensor share does.
"""

from __future__ import annotations

import dataclasses

import pytest

from edge_runtime.llm import RelativeSpeed
from edge_runtime.sdk.llm_q4 import (
    Q4_NOTE,
    Q4_STREAM_NOTE,
    q4_memory_bytes,
    q4_weight_bytes,
    quantize_plan,
)
from partitioner.llm_layout import LlmLayout, StrategyPrediction
from partitioner.llm_pipeline import plan_llm_layout, quantize_layout
from partitioner.tensor import ACTIVATION_RESERVE_BYTES, plan_tensor_parallel
from partitioner.tensor_plan import DecoderShape, TensorShare

SHAPE = DecoderShape(hidden=512, intermediate=1536, layers=8, heads=8, kv_heads=4,
                     head_dim=64, vocab=4000, max_context=256)
DEVICES = [RelativeSpeed(f"dev{i}", 8.0, 40.0) for i in range(3)]


def own(share: TensorShare) -> tuple[DecoderShape, TensorShare]:
    """The stage's own shape and the share as a whole-model share of it."""
    first, end = share.layer_range(SHAPE.layers)
    shape = dataclasses.replace(SHAPE, layers=end - first,
                                vocab=SHAPE.vocab if end == SHAPE.layers else 0)
    return shape, dataclasses.replace(share, layers=None)


def test_each_stage_is_charged_for_its_own_layers_and_the_head_once() -> None:
    fp32 = plan_llm_layout(SHAPE, DEVICES, [[0], [1], [2]])
    q4 = quantize_layout(fp32, DEVICES, quantize_plan)
    single = plan_tensor_parallel(SHAPE, DEVICES[:1], streaming=True).shares[0]
    assert [s.layers for s in q4.stages] == [s.layers for s in fp32.stages]
    assert q4.micro_batches == fp32.micro_batches and q4.strategy == "pipeline"
    shares = [s.plan.shares[0] for s in q4.stages]
    for stage, share, plain in zip(q4.stages, shares, (s.plan.shares[0] for s in fp32.stages),
                                   strict=True):
        shape, whole = own(share)
        assert Q4_NOTE in stage.plan.notes and stage.plan.shape == SHAPE
        assert share.layers == stage.layers and not share.streaming
        assert share.weight_bytes == q4_weight_bytes(shape, whole)
        assert share.peak_memory_bytes == q4_memory_bytes(shape, whole)
        assert 0.15 * plain.weight_bytes < share.weight_bytes < 0.3 * plain.weight_bytes
        assert stage.compute_s < fp32.stages[stage.index].compute_s
    assert [s.n_vocab_rows for s in shares] == [0, 0, SHAPE.vocab]
    # every matrix once, the head once: the stages sum to the single device's 4-bit bytes
    assert sum(s.weight_bytes for s in shares) == q4_weight_bytes(SHAPE, single)
    kv = [q4_memory_bytes(*own(s)) - q4_memory_bytes(dataclasses.replace(
        own(s)[0], max_context=0), own(s)[1]) for s in shares]
    assert sum(kv) == SHAPE.kv_cache_bytes(SHAPE.kv_heads)
    assert q4.predicted_s_per_token < fp32.predicted_s_per_token
    assert q4.predicted_tokens_per_s > fp32.predicted_tokens_per_s
    assert min(s.peak_memory_bytes for s in shares) > ACTIVATION_RESERVE_BYTES


@pytest.mark.parametrize("groups", [[[0], [1], [2]], [[0, 1], [2]]], ids=["pipeline", "hybrid"])
def test_planning_quantized_equals_quantizing_the_plan(groups: list[list[int]]) -> None:
    """`plan_llm_layout(quantize=...)` (what a strategy search would call) and
    `quantize_layout` of the fp32 layout (what a deploy of a ready layout calls) agree."""
    planned = plan_llm_layout(SHAPE, DEVICES, groups, quantize=quantize_plan)
    after = quantize_layout(plan_llm_layout(SHAPE, DEVICES, groups), DEVICES, quantize_plan)
    assert [s.plan.shares for s in planned.stages] == [s.plan.shares for s in after.stages]
    assert planned.predicted_s_per_token == pytest.approx(after.predicted_s_per_token)
    if len(groups[0]) == 2:  # the tensor pair: both shares 4-bit, the split kept
        pair = planned.stages[0].plan.shares
        assert [s.kv_heads for s in pair] == [(0, 2), (2, 4)]
        assert all(s.weight_bytes == q4_weight_bytes(*own(s)) for s in pair)


def test_a_budget_below_the_4bit_peak_streams_int8_blocks_in_its_stage() -> None:
    fp32 = plan_llm_layout(SHAPE, DEVICES[:2], [[0], [1]])
    need = max(q4_memory_bytes(*own(s.plan.shares[0]))
               for s in quantize_layout(fp32, DEVICES[:2], quantize_plan).stages)
    budget = need - 1
    q4 = quantize_layout(fp32, DEVICES[:2], quantize_plan, memory_budgets=[None, budget])
    first, last = (s.plan.shares[0] for s in q4.stages)
    assert not first.streaming and last.streaming and last.peak_memory_bytes == budget
    assert any(Q4_STREAM_NOTE in n for n in q4.stages[1].plan.notes)


def test_the_choice_record_is_kept_with_the_chosen_figures_4bit() -> None:
    fp32 = plan_llm_layout(SHAPE, DEVICES[:2], [[0], [1]])
    other = StrategyPrediction("single", True, 1.0, 1.0, 1, (("dev0",),), ((0, 8),))
    chosen = StrategyPrediction("pipeline", True, fp32.predicted_s_per_token,
                                fp32.predicted_tokens_per_s, 1, fp32.groups,
                                tuple(s.layers for s in fp32.stages))
    record: LlmLayout = dataclasses.replace(fp32, predictions=(other, chosen),
                                            reason="as asked", objective="throughput")
    q4 = quantize_layout(record, DEVICES[:2], quantize_plan)
    assert q4.reason == "as asked" and q4.objective == "throughput"
    assert q4.predictions[0] == other
    assert q4.predictions[1].s_per_token == q4.predicted_s_per_token < chosen.s_per_token


def test_auto_with_4_bit_weights_judges_every_layout_in_4_bits() -> None:
    """`auto` with q4 compares 4-bit predictions (each stage quantized before it is
    judged), and a layout whose 4-bit shares no budget can take is passed over, not
    chosen and then refused."""
    from edge_runtime.sdk.llm_pipeline_place import q4_stages
    from partitioner.errors import InfeasiblePlanError
    from partitioner.llm_strategy import plan_llm_strategy

    fp32 = plan_llm_strategy(SHAPE, DEVICES, "auto")
    q4 = plan_llm_strategy(SHAPE, DEVICES, "auto", quantize=q4_stages)
    for plain, quant in zip(fp32.predictions, q4.predictions, strict=True):
        if plain.feasible and quant.feasible:
            assert quant.s_per_token < plain.s_per_token, quant.strategy
    assert all(Q4_NOTE in stage.plan.notes for stage in q4.stages)
    # budgets that cannot hold (or stream) a 4-bit share on one device: single is skipped
    tiny = [1 << 20] * len(DEVICES)
    with pytest.raises(InfeasiblePlanError):
        plan_llm_strategy(SHAPE, DEVICES[:1], "single", memory_budgets=tiny[:1],
                          quantize=q4_stages)
