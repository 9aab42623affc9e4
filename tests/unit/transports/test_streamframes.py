"""Stream framing (`transports.streamframes`): whatever bytes-like parts a sender hands
over (bytes, memoryviews, numpy arrays; one part or many; small or large) come back as
the same bytes, and a part table that does not add up is refused."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest

from transports.sealing import Sealer, SealKeys
from transports.streamframes import LENGTH, SMALL_SEND_BYTES, frame, split


def _round_trip(parts: list[Any]) -> list[bytes]:
    wire = b"".join(bytes(view) for view in frame(parts))
    (length,) = LENGTH.unpack_from(wire)
    assert length == len(wire) - LENGTH.size
    got = split(memoryview(wire)[LENGTH.size:])
    assert got is not None
    return [bytes(part) for part in got]


@pytest.mark.parametrize("parts", [
    [b"one"],
    [b""],
    [memoryview(b"view")],
    [np.arange(6, dtype=np.float32).reshape(2, 3)],
    [b"a", np.arange(3, dtype=np.int64), memoryview(b"c")],
    [bytes(SMALL_SEND_BYTES + 1)],
    [bytes(SMALL_SEND_BYTES), b"tail"],
])
def test_parts_come_back_as_the_same_bytes(parts: list[Any]) -> None:
    assert _round_trip(parts) == [memoryview(p).cast("B").tobytes() for p in parts]


def test_a_part_table_that_does_not_add_up_is_refused() -> None:
    assert split(memoryview(struct.pack("<HII", 2, 1, 9) + b"xy")) is None
    assert split(memoryview(struct.pack("<HI", 1, 5) + b"xy")) is None
    assert split(memoryview(struct.pack("<H", 0))) is None
    with pytest.raises(ValueError):
        frame([])


def test_a_sealed_array_part_opens_to_its_bytes() -> None:
    keys = [SealKeys.shared(rank, 2, b"k" * 32) for rank in range(2)]
    array = np.arange(5, dtype=np.float32)
    opened = Sealer(keys[1]).open([Sealer(keys[0]).seal(1, [array])])
    assert [bytes(p) for p in opened] == [array.tobytes()]
