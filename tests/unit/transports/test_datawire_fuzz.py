"""The lean collective data format (`transports.datawire`) is as total as `wire.decode`:
any input decodes to a valid `DataMessage` or raises `ProtocolError`, nothing else, and
never allocates much more than it received (the `only_protocol_error` fixture).

Why: a member's listener drops a malformed data message and keeps going; any other
exception would end the collective call of a healthy member (issue 9)."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transports.datawire import MAGIC, VERSION, DataMessage, decode_data, encode_data
from transports.errors import ProtocolError
from transports.pieces import MAX_ELEMENTS, MIN_SPLIT_BYTES
from transports.wire import ALLOWED_DTYPES, numpy_dtype

Check = Callable[[Callable[[], Any], int], Any]
"""The `only_protocol_error` fixture (conftest.py)."""

EDGE_DIMS = st.sampled_from([0, 0, 1, 2, 3, 2**20, 2**40, 2**40 + 1, 2**62, 2**64 - 1])


def fixed_header(code: int, dims: list[int], *, version: int = VERSION, ndim: int | None = None,
                 source: int = 0, step: int = 0, seq: int = 1) -> bytes:
    ndim = len(dims) if ndim is None else ndim
    head = struct.pack("<2sBBBxHIQ", MAGIC, version, code, ndim, source, step, seq)
    return head + struct.pack(f"<{len(dims)}Q", *dims)


def implied_nbytes(code: int, dims: list[int]) -> int | None:
    if code >= len(ALLOWED_DTYPES):
        return None
    count = int(np.prod(dims, dtype=object)) if dims else 1
    nbytes = count * numpy_dtype(ALLOWED_DTYPES[code]).itemsize
    return nbytes if nbytes <= 4096 else None


def check_message(message: DataMessage | None) -> None:
    if message is not None:
        assert isinstance(message.tensor, np.ndarray) and message.seq >= 0
        assert len(message.tensor.tobytes()) == message.tensor.nbytes


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=120), max_size=4), st.booleans())
def test_arbitrary_bytes_after_the_magic_only_raise_protocol_error(
    only_protocol_error: Check, parts: list[bytes], magic: bool
) -> None:
    if magic and parts:
        parts[0] = MAGIC + parts[0]
    received = sum(map(len, parts))
    check_message(only_protocol_error(lambda: decode_data(parts), received))


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 255),
    st.lists(st.one_of(st.integers(0, 4), EDGE_DIMS), max_size=6),
    st.one_of(st.none(), st.integers(0, 255)),
    st.integers(0, 3),
    st.data(),
)
def test_wild_shapes_and_frame_counts_only_raise_protocol_error(
    only_protocol_error: Check,
    code: int,
    dims: list[int],
    ndim: int | None,
    layout: int,
    data: st.DataObject,
) -> None:
    head = fixed_header(code, dims, ndim=ndim)
    implied = implied_nbytes(code, dims)
    payload = bytes(implied) if implied is not None else data.draw(st.binary(max_size=16))
    if code == ALLOWED_DTYPES.index("bool") and payload and data.draw(st.booleans()):
        payload = payload[:-1] + b"\x02"
    parts = [
        [head + payload],                                           # inline
        [head, payload],                                            # its own frame
        [head, payload[:1], payload[1:]],                           # pieces, too small
        [head, payload, *data.draw(st.lists(st.binary(max_size=8), max_size=2))],
    ][layout]
    received = sum(map(len, parts))
    check_message(only_protocol_error(lambda: decode_data(parts), received))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from([0, 1, MIN_SPLIT_BYTES - 1, MIN_SPLIT_BYTES]), min_size=2,
                max_size=4), st.integers(-1, 1))
def test_split_tensors_in_any_piece_sizes_only_raise_protocol_error(
    only_protocol_error: Check, sizes: list[int], off_by: int
) -> None:
    declared = max(0, sum(sizes) + off_by)
    parts = [fixed_header(ALLOWED_DTYPES.index("uint8"), [declared]), *map(bytes, sizes)]
    received = sum(map(len, parts))
    message = only_protocol_error(lambda: decode_data(parts), received)
    if message is not None:
        assert message.tensor.nbytes == declared


@pytest.mark.parametrize("dims", [[0, 2**64 - 1], [2**40, 2**40, 0], [0, 2**41], [2**63, 0]])
@pytest.mark.parametrize("separate", [False, True])
def test_empty_shapes_numpy_cannot_build_are_protocol_errors(
    dims: list[int], separate: bool
) -> None:
    """Issue 9, finding 1, on the collective data path."""
    head = fixed_header(ALLOWED_DTYPES.index("float32"), dims)
    parts = [head, b""] if separate else [head]
    with pytest.raises(ProtocolError, match=f"more than {MAX_ELEMENTS} values") as info:
        decode_data(parts)
    assert info.value.__cause__ is None


def test_empty_shapes_within_the_bound_still_decode() -> None:
    message = decode_data([fixed_header(ALLOWED_DTYPES.index("int64"), [2**20, 2**20, 0])])
    assert message.tensor.shape == (2**20, 2**20, 0)


def test_the_message_size_limit_applies_to_data_messages() -> None:
    parts = encode_data(3, 0, 1, np.zeros(1000, np.float32), split_bytes=None)
    assert decode_data(parts, max_message_bytes=5000).tensor.shape == (1000,)
    with pytest.raises(ProtocolError, match="exceeds the limit of 1000"):
        decode_data(parts, max_message_bytes=1000)


def test_bool_tensors_must_hold_zero_or_one() -> None:
    code = ALLOWED_DTYPES.index("bool")
    assert decode_data([fixed_header(code, [2]) + b"\x00\x01"]).tensor.tolist() == [False, True]
    with pytest.raises(ProtocolError, match="bool bytes"):
        decode_data([fixed_header(code, [2]) + b"\x00\x02"])
