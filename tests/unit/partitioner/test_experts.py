"""Expert placement (`partitioner.experts`) and mixture-of-experts tensor plans.

Pure functions, no process: experts follow expected time per token (a token reads k of
E experts) under memory budgets, a device may get none, the budgets are respected or
the plan is refused, and the plan states each device's experts and predicted time in
its JSON and its description.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict, dataclass

import pytest

from partitioner.errors import InfeasiblePlanError, PartitionError
from partitioner.experts import expert_ranges, expert_room, place_experts
from partitioner.tensor import ACTIVATION_RESERVE_BYTES, plan_tensor_parallel
from partitioner.tensor_plan import DecoderShape, TensorPlan

# Qwen3-30B-A3B's sizes: 128 experts of 768 columns, 8 per token
QWEN3_30B = DecoderShape(hidden=2048, intermediate=128 * 768, layers=48, heads=32,
                         kv_heads=4, head_dim=128, vocab=151936, max_context=512,
                         experts=128, experts_per_token=8)


@dataclass(frozen=True)
class Dev:
    name: str
    mem_bandwidth_gbps: float
    gflops_fp32: float = 1000.0


def test_experts_follow_speed_when_memory_is_no_limit() -> None:
    assert place_experts(12, [0.0, 0.0], [1.0, 0.5]) == [4, 8]
    # a device whose fixed part already takes long gets fewer, here none
    assert place_experts(6, [0.0, 10.0, 0.0], [1.0, 1.0, 1.0]) == [3, 0, 3]


def test_memory_caps_experts_and_the_rest_go_by_speed() -> None:
    assert place_experts(10, [0.0] * 3, [0.1, 1.0, 1.0], [2, None, 5]) == [2, 4, 4]
    assert place_experts(10, [0.0] * 3, [1.0, 1.0, 1.0], [0, 5, 5]) == [0, 5, 5]


def test_experts_beyond_every_budget_are_refused_or_overflow() -> None:
    with pytest.raises(InfeasiblePlanError, match="hold 6 of the 8 experts"):
        place_experts(8, [0.0, 0.0], [1.0, 1.0], [3, 3])
    assert place_experts(8, [0.0, 0.0], [1.0, 2.0], [3, 3], overflow=True) == [5, 3]
    with pytest.raises(PartitionError):
        place_experts(4, [0.0], [0.0])


def test_ranges_and_room() -> None:
    assert expert_ranges([2, 0, 3]) == [(0, 2), (2, 2), (2, 5)]
    assert expert_room(10.5, 3) == 3 and expert_room(-4, 3) == 0


def test_a_dense_shape_keeps_its_digest() -> None:
    dense = dataclasses.replace(QWEN3_30B, intermediate=6144, experts=0, experts_per_token=0)
    fields = asdict(dense)
    del fields["experts"], fields["experts_per_token"]
    want = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
    assert dense.digest() == want != QWEN3_30B.digest()


def test_moe_plan_places_every_expert_once_and_states_it() -> None:
    devices = [Dev("fast", 8.0), Dev("mid", 4.0), Dev("slow", 2.0)]
    plan = plan_tensor_parallel(QWEN3_30B, devices, streaming=True)
    shares = plan.shares
    assert [s.experts for s in shares] == expert_ranges([s.n_experts for s in shares])
    assert shares[-1].experts[1] == 128
    assert shares[0].n_experts > shares[1].n_experts > shares[2].n_experts > 0
    for s in shares:  # an expert is 768 MLP columns
        assert s.mlp_columns == (s.experts[0] * 768, s.experts[1] * 768)
    # expected times are balanced: within one expert's expected read of each other
    times = [s.compute_s_per_token for s in shares]
    one = 48 * 768 * 3 * 2048 * 4 * 8 / 128 / 2e9
    assert max(times) - min(times) <= one
    assert plan.predicted_s_per_token == max(times)
    # a token reads 8 of 128 experts: the time is far below reading the whole share
    assert times[0] < 0.5 * shares[0].weight_bytes / 8e9
    assert TensorPlan.from_json(plan.to_json()) == plan
    lines = plan.describe()
    assert lines[0].startswith(f"fast: 2 kv heads, experts 0..{shares[0].n_experts - 1}, ")
    assert "ms/token" in lines[0] and "8 of 128 experts" in lines[-1]


def test_moe_plan_respects_memory_budgets() -> None:
    """A fast device with little memory holds few experts, a slow one with room many."""
    devices = [Dev("fast-small", 8.0), Dev("slow-big", 2.0)]
    budgets = [30 * 10**9, 100 * 10**9]
    plan = plan_tensor_parallel(QWEN3_30B, devices, memory_budgets=budgets)
    fast, slow = plan.shares
    assert fast.n_experts < slow.n_experts and fast.n_experts + slow.n_experts == 128
    for share, budget in zip(plan.shares, budgets, strict=True):
        assert share.peak_memory_bytes <= budget and not share.streaming
    unbounded = plan_tensor_parallel(QWEN3_30B, devices)
    assert unbounded.shares[0].n_experts > unbounded.shares[1].n_experts
    with pytest.raises(InfeasiblePlanError, match="experts"):
        plan_tensor_parallel(QWEN3_30B, devices, memory_budgets=[30 * 10**9, 60 * 10**9])


def test_experts_beyond_budgets_stream_in_a_streaming_plan() -> None:
    devices = [Dev("a", 4.0), Dev("b", 4.0)]
    budgets = [15 * 10**9, 30 * 10**9]
    plan = plan_tensor_parallel(QWEN3_30B, devices, memory_budgets=budgets, streaming=True)
    assert sum(s.n_experts for s in plan.shares) == 128
    assert any(s.streaming for s in plan.shares)
    assert any("stream" in note for note in plan.notes)
    for share, budget in zip(plan.shares, budgets, strict=True):
        assert share.peak_memory_bytes <= budget
        if share.streaming:  # its window holds at least its largest block
            assert share.window_bytes >= share.n_experts * 768 * 3 * 2048 * 4


def test_a_device_with_attention_only_gets_no_experts() -> None:
    """Two devices of equal speed: the one holding all KV heads and vocabulary rows is
    the slower per token, so with few experts it gets none."""
    shape = DecoderShape(hidden=512, intermediate=2 * 64, layers=4, heads=8, kv_heads=1,
                         head_dim=64, vocab=32000, experts=2, experts_per_token=1,
                         max_context=64)
    plan = plan_tensor_parallel(shape, [Dev("a", 4.0), Dev("b", 3.9)])
    holder = next(s for s in plan.shares if s.n_kv_heads)
    assert holder.n_experts == 0 and holder.summary(moe=True).count("no experts") == 1
    assert sum(s.n_experts for s in plan.shares) == 2


def test_shape_checks_experts() -> None:
    with pytest.raises(PartitionError, match="experts"):
        dataclasses.replace(QWEN3_30B, experts_per_token=0)
    with pytest.raises(PartitionError, match="multiple"):
        dataclasses.replace(QWEN3_30B, intermediate=1000)
    assert ACTIVATION_RESERVE_BYTES > 0
