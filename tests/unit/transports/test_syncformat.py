"""The sync formats' codec: bf16 rounds as ml_dtypes does, fp16 as numpy does, q8 keeps
each value within half its block's step, sizes are what the cost model is told, a
payload of the wrong size is refused, and the schedule is chosen on the wire bytes."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from transports.cost import allreduce_schedule, pick, uniform
from transports.errors import CollectiveError
from transports.syncformat import (
    Q8_BLOCK,
    decode,
    encode,
    round_trip,
    sync_schedule,
    wire_fraction,
    wire_nbytes,
)

VALUES = (np.random.default_rng(0).standard_normal(1000) * 10).astype(np.float32)


def test_bf16_rounds_to_nearest_even_like_ml_dtypes() -> None:
    tricky = np.array([1.0, 1.00390625, 1.01171875, -3.5e-3, 65504.0, 0.0, -0.0, 1e-40],
                      np.float32)
    for x in (VALUES, tricky):
        want = x.astype(ml_dtypes.bfloat16).astype(np.float32)
        np.testing.assert_array_equal(round_trip(x, "bf16"), want)


def test_fp16_is_numpy_half() -> None:
    np.testing.assert_array_equal(round_trip(VALUES, "fp16"),
                                  VALUES.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("count", [1, 31, 32, 33, 1000])
def test_q8_error_is_within_half_a_step_of_each_block(count: int) -> None:
    x = VALUES[:count].copy()
    x[: min(count, Q8_BLOCK)] *= 100  # one loud block must not coarsen the others
    got = round_trip(x, "q8")
    for start in range(0, count, Q8_BLOCK):
        block = x[start:start + Q8_BLOCK]
        step = float(np.abs(block).max()) / 127
        assert np.abs(got[start:start + Q8_BLOCK] - block).max() <= step / 2 * 1.0001
    assert encode(x, "q8").nbytes == wire_nbytes("q8", count)
    np.testing.assert_array_equal(round_trip(np.zeros(count, np.float32), "q8"), 0)


def test_sizes_and_a_wrong_payload() -> None:
    assert wire_nbytes("fp32", 64) == 256 and wire_nbytes("bf16", 64) == 128
    assert wire_nbytes("q8", 64) == 2 * 4 + 64
    assert wire_fraction("q8") == pytest.approx(36 / 128)
    with pytest.raises(CollectiveError, match="72 bytes"):
        decode(np.zeros(71, np.uint8), "q8", 64)
    with pytest.raises(CollectiveError, match="int4"):
        wire_nbytes("int4", 4)


def test_the_schedule_is_chosen_on_the_wire_bytes() -> None:
    lat, bw = uniform(4, 200e-6, 10e6)  # slow links: bytes decide
    payloads = [2048 * 2**k for k in range(12)]
    q8 = sync_schedule(payloads, lat, bw, 30e-6, "q8")
    wire = [wire_nbytes("q8", p // 4) for p in payloads]
    by_wire = allreduce_schedule(wire, lat, bw, 30e-6)
    # the same choices, at the fp32 sizes a member picks with
    assert [name for _, name in q8] == [name for _, name in by_wire]
    assert {upto for upto, _ in q8} <= set(payloads)
    fp32 = sync_schedule(payloads, lat, bw, 30e-6, "fp32")
    assert fp32 == allreduce_schedule(payloads, lat, bw, 30e-6)
    # fewer bytes move the crossover to all-to-all up to larger fp32 payloads
    changed = [p for p in payloads if pick(fp32, p) != pick(q8, p)]
    assert changed and all(pick(q8, p) == "recursive_doubling" for p in changed)
