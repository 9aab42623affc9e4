"""The lean collective data format: exact round trips and strict validation."""

from __future__ import annotations

import struct

import ml_dtypes
import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from transports.datawire import (
    INLINE_MAX_BYTES,
    MAGIC,
    SPLIT_BYTES,
    decode_data,
    encode_data,
    is_data_message,
)
from transports.errors import ProtocolError
from transports.wire import Frame, encode

DTYPES = ["float32", "float16", "int8", "uint8", "int32", "int64", "bool"]


def _roundtrip(array: np.ndarray, seq: int = 7, step: int = 3, source: int = 2) -> np.ndarray:
    parts = encode_data(seq, step, source, array)
    message = decode_data([bytes(p) for p in parts])
    assert (message.seq, message.step, message.source) == (seq, step, source)
    return message.tensor


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        st.sampled_from(DTYPES),
        hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6),
    ),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 0xFFFF),
)
def test_every_dtype_and_shape_round_trips_exactly(
    array: np.ndarray, seq: int, step: int, source: int
) -> None:
    got = _roundtrip(array, seq, step, source)
    assert got.dtype == array.dtype and got.shape == array.shape
    np.testing.assert_array_equal(got, array)


def test_bfloat16_zero_d_empty_and_non_contiguous() -> None:
    bf = np.arange(6, dtype=np.float32).astype(ml_dtypes.bfloat16).reshape(2, 3)
    assert _roundtrip(bf).dtype == bf.dtype
    np.testing.assert_array_equal(_roundtrip(bf), bf)
    assert _roundtrip(np.float32(2.5).reshape(())).shape == ()
    assert _roundtrip(np.zeros((0, 4), np.int8)).shape == (0, 4)
    strided = np.arange(20, dtype=np.int32).reshape(4, 5)[:, ::2]
    np.testing.assert_array_equal(_roundtrip(strided), strided)
    big_endian = np.arange(4, dtype=">i4")
    np.testing.assert_array_equal(_roundtrip(big_endian), big_endian)


def test_small_tensors_travel_in_one_frame_large_ones_zero_copy() -> None:
    huge = np.arange(SPLIT_BYTES, dtype=np.int32)  # 1 MiB: header + 4 pieces
    parts = encode_data(2, 1, 0, huge)
    assert len(parts) == 5
    np.testing.assert_array_equal(decode_data([bytes(p) for p in parts]).tensor, huge)
    small = np.ones(INLINE_MAX_BYTES // 4, np.float32)
    assert len(encode_data(1, 0, 0, small)) == 1
    large = np.ones(INLINE_MAX_BYTES // 4 + 1, np.float32)
    parts = encode_data(1, 0, 0, large)
    assert len(parts) == 2
    assert np.shares_memory(np.frombuffer(parts[1], np.float32), large)  # no copy on send
    received = [bytes(p) for p in parts]
    tensor = decode_data(received).tensor
    assert not tensor.flags.writeable  # a view on the received buffer, not a copy
    np.testing.assert_array_equal(tensor, large)


def test_disallowed_dtypes_cannot_be_sent() -> None:
    with pytest.raises(ProtocolError, match="cast the tensor first"):
        encode_data(1, 0, 0, np.zeros(3, np.float64))
    with pytest.raises(ProtocolError, match="out of range"):
        encode_data(1, 0, 70000, np.zeros(3, np.float32))


def test_data_messages_and_frame_headers_never_look_alike() -> None:
    data = encode_data(1, 0, 0, np.zeros(3, np.float32))
    assert is_data_message(data[0])
    frame = encode(Frame("c", 1, meta={"r": 0, "s": 0}, tensors={"x": np.zeros(3, np.float32)}))
    assert not is_data_message(frame[0])
    assert not is_data_message(b"") and not is_data_message(b"\xc1")
    # 0xC1 is the one byte msgpack never uses: a data message is never a Frame header
    with pytest.raises((ValueError, msgpack.exceptions.UnpackException)):
        msgpack.unpackb(bytes(data[0]))


def _header(*, version: int = 1, code: int = 0, ndim: int = 1, source: int = 0,
            step: int = 0, seq: int = 1, dims: tuple[int, ...] = (3,)) -> bytes:
    fixed = struct.pack("<2sBBBxHIQ", MAGIC, version, code, ndim, source, step, seq)
    return fixed + struct.pack(f"<{len(dims)}Q", *dims)


@pytest.mark.parametrize(
    ("parts", "reason"),
    [
        ([], "empty"),
        ([b"a", b"b", b"c"], "too short"),
        ([_header(dims=(2**16,)), bytes(2**18), b"\x00"], "followed by 1 more"),
        ([_header(dims=(2**16,)), bytes(2**17), bytes(2**17 - 1)], "its frames have"),
        ([_header(dims=(2**16,)), bytes(10), bytes(2**18 - 10)], "pieces under"),
        ([MAGIC + b"\x01"], "too short"),
        ([_header(version=2) + bytes(12)], "version 2"),
        ([b"XX" + _header()[2:] + bytes(12)], "version"),
        ([_header(code=200) + bytes(12)], "unknown dtype code"),
        ([_header(ndim=40, dims=())], "40 dims"),
        ([_header(ndim=3, dims=(1,))], "shorter than its declared shape"),
        ([_header() + bytes(11)], "!= 11 bytes"),
        ([_header(dims=(2**62,)) + bytes(12)], "more than 1099511627776 values"),
        ([_header(dims=(2**30,)) + bytes(12)], "bytes received"),
        ([_header() + b"x", bytes(12)], "trailing bytes"),
        ([_header(), bytes(13)], "!= 13 bytes"),
        ([_header(code=7) + bytes([0, 1, 2])], "bool bytes must be 0 or 1"),
    ],
)
def test_malformed_data_messages_are_refused_with_the_rule_broken(
    parts: list[bytes], reason: str
) -> None:
    with pytest.raises(ProtocolError, match=reason):
        decode_data(parts)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_after_the_magic_never_crashes(tail: bytes) -> None:
    try:
        message = decode_data([MAGIC + tail])
    except ProtocolError:
        return
    assert isinstance(message.tensor, np.ndarray)


def test_splitting_follows_the_security_setting() -> None:
    from transports.keys import generate_keypair
    from transports.security import Security

    assert Security(insecure=True).split_bytes is None  # whole frames are faster unencrypted
    assert Security(keypair=generate_keypair()).split_bytes == SPLIT_BYTES
    huge = np.arange(SPLIT_BYTES, dtype=np.int32)
    whole = encode_data(1, 0, 0, huge, split_bytes=None)
    assert len(whole) == 2 and np.shares_memory(np.frombuffer(whole[1], np.int32), huge)
    np.testing.assert_array_equal(decode_data(whole).tensor, huge)
    with pytest.raises(ProtocolError, match="split_bytes must be"):
        encode_data(1, 0, 0, huge, split_bytes=1000)
