"""The SDK's 4-bit planning (`sdk/llm_plan.py`), pure: the memory it reserves for a
resident 4-bit share, and the int8 streaming plan it makes where that does not fit.

The reservation is checked against loads measured on the development machine (in-process
`TensorWorker(quantize="q4")` on the bench's reference checkpoint, RSS above the
process's own: 791 MiB at the loading peak for one share, 413 MiB for either half of a
2-way split); the streaming plan against the engine's own residency policy.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from edge_runtime.errors import ConfigError, MemoryBudgetError
from edge_runtime.llm.residency import INT8_STREAM_COMPUTE_BPS, plan_residency
from edge_runtime.sdk.llm_plan import (
    Q4_NOTE,
    Q4_STREAM_NOTE,
    check_q4_budgets,
    fp32_block_bytes,
    int8_block_bytes,
    q4_memory_bytes,
    q4_stream_residency,
    q4_weight_bytes,
    quantize_plan,
    read_bps_of,
)
from partitioner.tensor import (
    ACTIVATION_RESERVE_BYTES,
    DecoderShape,
    TensorPlan,
    plan_tensor_parallel,
)

MiB = 2**20
# The bench's reference checkpoint (edge_runtime.llm.synthetic.REFERENCE) at 512 tokens.
REFERENCE = DecoderShape(hidden=2048, intermediate=5632, layers=6, heads=16, kv_heads=16,
                         head_dim=128, vocab=32000, max_context=512)
# Measured loading peaks (MiB of RSS above the process before loading, in a fresh process
# with the slices converted already), by agents in the split: 791 and 413 while every
# onnxruntime session kept its serialized model, 609 and 326 since they drop it.
MEASURED_PEAK_MIB = {1: 609, 2: 326}


@dataclass(frozen=True)
class Device:
    """The profile fields the planners read (`devices.DeviceProfile` has them all)."""

    name: str
    mem_bandwidth_gbps: float = 15.0
    gflops_fp32: float = 50.0
    disk_read_gbps: float = 1.3


def plan_for(n: int, shape: DecoderShape = REFERENCE) -> tuple[TensorPlan, list[Device]]:
    devices = [Device(f"d{i}") for i in range(n)]
    return plan_tensor_parallel(shape, devices, streaming=True), devices


@pytest.mark.parametrize("agents", [1, 2])
def test_the_reservation_covers_the_measured_loading_peak_without_waste(agents: int) -> None:
    plan, _ = plan_for(agents)
    for share in plan.shares:
        fixed = REFERENCE.kv_cache_bytes(share.n_kv_heads) + ACTIVATION_RESERVE_BYTES
        weights = (q4_memory_bytes(REFERENCE, share) - fixed) / MiB
        # the first rule (2x the codes) reserved 446 MiB for a share that peaks at 609
        assert 2 * q4_weight_bytes(REFERENCE, share) / MiB < MEASURED_PEAK_MIB[agents]
        assert MEASURED_PEAK_MIB[agents] <= weights <= 1.1 * MEASURED_PEAK_MIB[agents]


def test_a_mixture_of_experts_reserves_every_layer_router() -> None:
    moe = DecoderShape(hidden=256, intermediate=8 * 512, layers=4, heads=8, kv_heads=4,
                       head_dim=32, vocab=1000, max_context=64, experts=8,
                       experts_per_token=2)
    wide = DecoderShape(**{**moe.__dict__, "experts": 128, "intermediate": 128 * 32})
    for shape in (moe, wide):
        plan, _ = plan_for(2, shape)
        share = plan.shares[0]
        assert share.n_experts > 0
        without = DecoderShape(**{**shape.__dict__, "experts": 0, "experts_per_token": 0})
        routers = shape.layers * shape.router_bytes()
        assert shape.router_bytes() == shape.experts * shape.hidden * 4
        # the router stays fp32 (the engine keeps it flat), in every layer's MLP block
        assert (q4_memory_bytes(shape, share) - q4_memory_bytes(without, share)
                >= routers)
        assert (fp32_block_bytes(shape, share)[0] - fp32_block_bytes(without, share)[0]
                >= routers)


def test_a_share_whose_4bit_kernels_do_not_fit_streams_int8_blocks_as_planned() -> None:
    plan, devices = plan_for(1)
    share = plan.shares[0]
    need = q4_memory_bytes(REFERENCE, share)
    sizes = int8_block_bytes(REFERENCE, share)
    fixed = REFERENCE.kv_cache_bytes(share.n_kv_heads) + ACTIVATION_RESERVE_BYTES
    # int8 is a quarter of fp32 (plus a scale per column)
    assert 0.25 < sum(sizes) / share.weight_bytes < 0.26
    streamed = []
    for budget in (fixed + sum(sizes) // 2, fixed + sum(sizes) + (1 << 20), need - 1):
        q = quantize_plan(plan, devices, [budget])
        s = q.shares[0]
        assert s.streaming and s.peak_memory_bytes == budget
        assert s.weight_bytes == sum(sizes)
        # the agent's worker plans its window with the same sizes, speeds and room
        res = plan_residency(sizes, [b / INT8_STREAM_COMPUTE_BPS for b in sizes],
                             budget - fixed, 1.3e9)
        assert res == q4_stream_residency(REFERENCE, share, budget, read_bps_of(devices[0]))
        assert s.compute_s_per_token == res.predicted_s_per_token
        assert q.predicted_s_per_token == res.predicted_s_per_token
        note = next(n for n in q.notes if Q4_STREAM_NOTE in n)
        assert f"{res.bytes_read_per_token / 1e6:.1f} MB read per token" in note
        assert Q4_NOTE in q.notes
        check_q4_budgets(q, [budget])  # a streaming share is within its budget
        streamed.append(res.bytes_read_per_token)
    # half the int8 bytes fit: at least the other half is read per token (the
    # read-ahead's room is not pinned), not the whole share; all fit: nothing is
    assert sum(sizes) - sum(sizes) // 2 <= streamed[0] < 0.7 * sum(sizes)
    assert streamed[1] == streamed[2] == 0
    resident = quantize_plan(plan, devices, [need]).shares[0]
    assert not resident.streaming and resident.peak_memory_bytes == need


def test_a_budget_that_allows_neither_is_refused_before_loading() -> None:
    plan, devices = plan_for(2)
    share = plan.shares[0]
    fixed = REFERENCE.kv_cache_bytes(share.n_kv_heads) + ACTIVATION_RESERVE_BYTES
    _, largest = fp32_block_bytes(REFERENCE, share)
    least = fixed + largest  # converting to int8 reads a whole fp32 block
    with pytest.raises(MemoryBudgetError, match="largest fp32 block"):
        q4_stream_residency(REFERENCE, share, least - 1, 1e9)
    q4_stream_residency(REFERENCE, share, least, 1e9)
    budgets = [least - 1, least]
    q = quantize_plan(plan, devices, budgets)
    assert [s.streaming for s in q.shares] == [False, True]
    with pytest.raises(ConfigError, match=r"agent d0: .* neither load .* nor stream"):
        check_q4_budgets(q, budgets)


def test_the_disk_speed_comes_from_the_profile() -> None:
    assert read_bps_of(Device("a", disk_read_gbps=0.25)) == 0.25e9
    plan, _ = plan_for(1)
    share = plan.shares[0]
    budget = REFERENCE.kv_cache_bytes(share.n_kv_heads) + ACTIVATION_RESERVE_BYTES + sum(
        int8_block_bytes(REFERENCE, share)) // 2
    slow = quantize_plan(plan, [Device("d0", disk_read_gbps=0.2)], [budget])
    fast = quantize_plan(plan, [Device("d0", disk_read_gbps=2.0)], [budget])
    assert slow.predicted_s_per_token > 2 * fast.predicted_s_per_token
