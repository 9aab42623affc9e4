"""`plan_tensor_parallel`: shares by bandwidth, whole KV groups, memory caps, JSON."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from partitioner import DecoderShape, TensorPlan, apportion, plan_tensor_parallel
from partitioner.errors import InfeasiblePlanError, PartitionError

REF = DecoderShape(
    hidden=2048, intermediate=5632, layers=6, heads=16, kv_heads=16, head_dim=128, vocab=32000
)
GQA = DecoderShape(
    hidden=2048, intermediate=5632, layers=6, heads=32, kv_heads=4, head_dim=64, vocab=32000
)


@dataclass(frozen=True)
class Dev:
    name: str
    mem_bandwidth_gbps: float
    gflops_fp32: float = 50.0
    disk_read_gbps: float = 1.0


def test_equal_devices_get_equal_shares() -> None:
    plan = plan_tensor_parallel(REF, [Dev("a", 10), Dev("b", 10)])
    a, b = plan.shares
    assert a.kv_heads == (0, 8) and b.kv_heads == (8, 16)
    assert a.n_columns == b.n_columns == 2816
    assert a.n_vocab_rows == b.n_vocab_rows == 16000
    assert a.weight_bytes == b.weight_bytes


def test_shares_follow_bandwidth() -> None:
    plan = plan_tensor_parallel(REF, [Dev("pi", 4), Dev("jetson", 34), Dev("laptop", 17)])
    total = sum(s.weight_bytes for s in plan.shares)
    for s, bw in zip(plan.shares, [4, 34, 17], strict=True):
        assert abs(s.weight_bytes / total - bw / 55) < 0.02
    times = [s.compute_s_per_token for s in plan.shares]
    assert max(times) / min(times) < 1.1  # balanced: nobody waits much for the others
    assert plan.hub == 1  # the fastest device, when no links are given
    assert plan.predicted_s_per_token == max(times)


def test_ranges_tile_the_model_for_odd_counts() -> None:
    for n in (1, 3, 5, 7):
        plan = plan_tensor_parallel(GQA, [Dev(f"d{i}", 1 + i) for i in range(n)])
        for field, total in (("kv_heads", 4), ("mlp_columns", 5632), ("vocab_rows", 32000)):
            ranges = [getattr(s, field) for s in plan.shares]
            assert ranges[0][0] == 0 and ranges[-1][1] == total
            assert all(r[1] == q[0] for r, q in itertools.pairwise(ranges))


def test_more_devices_than_kv_heads() -> None:
    plan = plan_tensor_parallel(GQA, [Dev(f"d{i}", 10) for i in range(6)])
    no_heads = [s for s in plan.shares if s.n_kv_heads == 0]
    assert len(no_heads) == 2
    # those do MLP work only, and more of it, so that bytes stay balanced
    assert all(
        s.n_columns > max(t.n_columns for t in plan.shares if t.n_kv_heads) for s in no_heads
    )
    w = [s.weight_bytes for s in plan.shares]
    assert max(w) / min(w) < 1.1


def test_memory_budget_caps_resident_shares() -> None:
    total = plan_tensor_parallel(REF, [Dev("a", 1)]).shares[0].weight_bytes
    cap = int(total * 0.3)
    plan = plan_tensor_parallel(
        REF, [Dev("small", 100), Dev("big", 10)], memory_budgets=[cap, None]
    )
    small, big = plan.shares
    assert small.peak_memory_bytes <= cap
    assert big.weight_bytes > small.weight_bytes  # the rest moved to the device with room
    assert "capped" in " ".join(plan.notes)


def test_infeasible_budgets_say_what_to_do() -> None:
    with pytest.raises(InfeasiblePlanError, match="streaming=True"):
        plan_tensor_parallel(
            REF, [Dev("a", 1), Dev("b", 1)], memory_budgets=[200_000_000, 200_000_000]
        )


def test_streaming_keeps_shares_and_caps_the_window() -> None:
    # The example: ~1.8 GB over 2 agents with a 256 MB budget each.
    shape = replace(REF, max_context=512)
    budget = 256 * 1024 * 1024
    devs = [Dev("a", 1), Dev("b", 3)]
    plan = plan_tensor_parallel(shape, devs, memory_budgets=[budget, budget], streaming=True)
    resident = plan_tensor_parallel(shape, devs)
    assert [s.weight_bytes for s in plan.shares] == [s.weight_bytes for s in resident.shares]
    for s in plan.shares:
        assert s.streaming and 0 < s.window_bytes < s.weight_bytes
        assert s.peak_memory_bytes == budget
        assert s.compute_s_per_token >= (s.weight_bytes - s.window_bytes) / 1e9  # disk at 1 GB/s
    with pytest.raises(InfeasiblePlanError, match="largest"):
        plan_tensor_parallel(shape, [Dev("a", 1)], memory_budgets=[40_000_000], streaming=True)
    with pytest.raises(InfeasiblePlanError, match="max_context"):  # the KV cache alone is too big
        plan_tensor_parallel(REF, devs, memory_budgets=[budget, budget], streaming=True)


def test_hub_has_the_lowest_summed_latency() -> None:
    links = {(0, 1): 0.010, (0, 2): 0.010, (1, 2): 0.001}
    plan = plan_tensor_parallel(REF, [Dev("a", 1), Dev("b", 1), Dev("c", 1)], links=links)
    assert plan.hub in (1, 2)
    assert plan_tensor_parallel(REF, [Dev("a", 1), Dev("b", 1)], hub=0).hub == 0
    with pytest.raises(PartitionError):
        plan_tensor_parallel(REF, [Dev("a", 1)], hub=3)


def test_wire_bytes() -> None:
    plan = plan_tensor_parallel(REF, [Dev("a", 1), Dev("b", 2), Dev("c", 1)])
    spoke = next(s for i, s in enumerate(plan.shares) if i != plan.hub)
    hub = plan.shares[plan.hub]
    per_allreduce = 2 * 2048 * 4
    assert spoke.wire_bytes_per_token == 2 * 6 * per_allreduce + spoke.n_vocab_rows * 4
    assert hub.wire_bytes_per_token == 2 * 6 * per_allreduce * 2 + (32000 - hub.n_vocab_rows) * 4
    assert plan_tensor_parallel(REF, [Dev("a", 1)]).shares[0].wire_bytes_per_token == 0


def test_json_round_trip() -> None:
    plan = plan_tensor_parallel(GQA, [Dev("a", 1), Dev("b", 2), Dev("c", 3)], model_digest="abc")
    again = TensorPlan.from_json(plan.to_json())
    assert again == plan
    assert '"strategy": "tensor"' in plan.to_json()
    with pytest.raises(PartitionError, match="tensor plan"):
        TensorPlan.from_json('{"strategy": "pipeline", "version": 1}')


def test_bad_inputs() -> None:
    with pytest.raises(PartitionError):
        plan_tensor_parallel(REF, [])
    with pytest.raises(PartitionError, match="mem_bandwidth_gbps"):
        plan_tensor_parallel(REF, [Dev("a", 0)])
    with pytest.raises(PartitionError):
        DecoderShape(
            hidden=64, intermediate=128, layers=2, heads=4, kv_heads=3, head_dim=16, vocab=10
        )


@settings(max_examples=200, deadline=None)
@given(
    total=st.integers(0, 10_000),
    weights=st.lists(st.floats(0.0, 100.0), min_size=1, max_size=9).filter(lambda w: sum(w) > 0.01),
    unit=st.sampled_from([1, 32, 64]),
)
def test_apportion_sums_and_is_proportional(total: int, weights: list[float], unit: int) -> None:
    parts = apportion(total, weights, unit)
    assert sum(parts) == total and all(p >= 0 for p in parts)
    s = sum(weights)
    for p, w in zip(parts, weights, strict=True):
        assert abs(p - total * w / s) <= 2 * unit + total % unit
        if w == 0:
            assert p == 0 or (p == total % unit and w == max(weights))


def test_real_device_presets_plan() -> None:
    from devices import presets

    devs = [presets.get(n) for n in ("raspberry-pi-4", "jetson-orin-nano", "laptop")]
    plan = plan_tensor_parallel(GQA, devs)
    total_bw = sum(d.mem_bandwidth_gbps for d in devs)
    total = sum(s.weight_bytes for s in plan.shares)
    for d, s in zip(devs, plan.shares, strict=True):  # more bandwidth, more weights
        assert abs(s.weight_bytes / total - d.mem_bandwidth_gbps / total_bw) < 0.02
    assert [s.device for s in plan.shares] == [d.name for d in devs]


def test_links_by_device_name() -> None:
    from partitioner.cost import Links

    @dataclass(frozen=True)
    class Link:
        src: str
        dst: str
        rtt_s: float
        bandwidth_bytes_per_s: float = 1e8

    links = Links([Link("a", "b", 0.02), Link("a", "c", 0.02), Link("b", "c", 0.001)])
    plan = plan_tensor_parallel(REF, [Dev("a", 10), Dev("b", 1), Dev("c", 2)], links=links)
    assert plan.hub == 2  # b and c are close; c is faster
