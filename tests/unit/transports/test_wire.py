"""Wire format: round trips for every dtype and shape, zero copies, and validation."""

from __future__ import annotations

import contextlib
import math

import ml_dtypes
import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from transports.errors import ProtocolError, RemoteError
from transports.wire import (
    ALLOWED_DTYPES,
    ERROR_KIND,
    PROTOCOL_VERSION,
    Frame,
    decode,
    encode,
    error_frame,
    peek_request_id,
    raise_if_error,
)

NUMPY_DTYPES = [d for d in ALLOWED_DTYPES if d != "bfloat16"]
shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)


def as_bytes(parts: list[bytes | memoryview]) -> list[bytes]:
    """What a receiver gets: independent byte strings."""
    return [bytes(p) for p in parts]


@settings(max_examples=25, deadline=None)
@given(data=st.data(), dtype=st.sampled_from(NUMPY_DTYPES), shape=shapes)
def test_round_trip_every_dtype_and_shape(
    data: st.DataObject, dtype: str, shape: tuple[int, ...]
) -> None:
    array = data.draw(hnp.arrays(np.dtype(dtype), shape))
    frame = Frame("t", request_id=7, sender="a", meta={"k": [1, "x", None]}, tensors={"x": array})
    got = decode(as_bytes(encode(frame)))
    assert got.kind == "t" and got.request_id == 7 and got.sender == "a"
    assert got.meta == {"k": [1, "x", None]}
    out = got.tensors["x"]
    assert out.dtype == array.dtype and out.shape == array.shape
    np.testing.assert_array_equal(out, array)
    assert out.tobytes() == array.tobytes()  # bit-exact, NaNs included


@settings(max_examples=15, deadline=None)
@given(bits=hnp.arrays(np.uint16, shapes))
def test_bfloat16_travels_as_its_bit_pattern(bits: np.ndarray) -> None:
    array = bits.view(ml_dtypes.bfloat16)
    out = decode(as_bytes(encode(Frame("t", tensors={"w": array})))).tensors["w"]
    assert out.dtype == np.dtype(ml_dtypes.bfloat16)
    assert out.view(np.uint16).tolist() == bits.tolist()


def test_empty_and_zero_d_tensors() -> None:
    tensors = {
        "scalar": np.array(3.5, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.int64),
        "flag": np.array(True),
    }
    got = decode(as_bytes(encode(Frame("t", tensors=tensors)))).tensors
    assert got["scalar"].shape == () and got["scalar"] == np.float32(3.5)
    assert got["empty"].shape == (0, 4) and got["empty"].dtype == np.int64
    assert got["flag"].shape == () and bool(got["flag"]) is True


def test_encode_and_decode_do_not_copy_tensor_bytes() -> None:
    x = np.arange(1024, dtype=np.float32)
    parts = encode(Frame("t", tensors={"x": x}))
    assert np.shares_memory(np.frombuffer(parts[1], dtype=np.float32), x)
    received = bytearray(parts[1])
    got = decode([bytes(parts[0]), received]).tensors["x"]
    assert np.shares_memory(got, np.frombuffer(received, dtype=np.float32))


def test_non_contiguous_and_big_endian_arrays_are_sent_correctly() -> None:
    x = np.arange(24, dtype=np.int32).reshape(4, 6)[:, ::2]
    y = np.arange(5, dtype=">f4")
    got = decode(as_bytes(encode(Frame("t", tensors={"x": x, "y": y})))).tensors
    np.testing.assert_array_equal(got["x"], x)
    np.testing.assert_array_equal(got["y"], y)


@pytest.mark.parametrize(
    "array",
    [
        np.array(["a", "b"], dtype=object),
        np.zeros(2, dtype=[("a", "i4"), ("b", "f4")]),
        np.zeros(3, dtype=np.float64),
        np.zeros(3, dtype=np.complex64),
    ],
)
def test_refuses_dtypes_that_may_not_cross_the_wire(array: np.ndarray) -> None:
    with pytest.raises(ProtocolError, match="cannot be sent"):
        encode(Frame("t", tensors={"x": array}))


def test_refuses_meta_that_is_not_plain_data() -> None:
    with pytest.raises(ProtocolError, match="plain data"):
        encode(Frame("t", meta={"x": object()}))


def header(**overrides: object) -> bytes:
    base: dict[str, object] = {"v": PROTOCOL_VERSION, "k": "t", "id": 1, "s": "", "m": {}, "t": []}
    base.update(overrides)
    return msgpack.packb(base, use_bin_type=True)


@pytest.mark.parametrize(
    ("parts", "reason"),
    [
        ([], "empty message"),
        ([b"\xc1garbage"], "not valid msgpack"),
        ([msgpack.packb([1, 2])], "must be a msgpack map"),
        ([header(v=99)], "unsupported protocol version 99"),
        ([header(extra=1)], "header keys"),
        ([header(k="")], "kind"),
        ([header(id=-1)], "request id"),
        ([header(id="1")], "request id"),
        ([header(m=[1])], "meta must be a map"),
        ([header(t=[["x", "float32", [2], 8, None]])], "declares 1 tensors but 0"),
        ([header(), b"\x00"], "declares 0 tensors but 1"),
        ([header(t=[["x", "float32", [2], 8, None]]), b"\x00" * 4], "declares 8 bytes, frame has"),
        ([header(t=[["x", "float32", [3], 8, None]]), b"\x00" * 8], r"shape \[3\] × 4 bytes"),
        ([header(t=[["x", "object", [1], 8, None]]), b"\x00" * 8], "not allowed"),
        ([header(t=[["x", "float64", [1], 8, None]]), b"\x00" * 8], "not allowed"),
        ([header(t=[["x", "uint8", [-1], 0, None]]), b""], "non-negative"),
        ([header(t=[["x", "uint8", [1] * 40, 1, None]]), b"\x00"], "dims"),
        ([header(t=[["x", "uint8", [1], 1]]), b"\x00"], "tensor meta must be"),
        ([header(t=[["x", "bool", [2], 2, None]]), b"\x00\x07"], "bool bytes"),
        ([header(t=[["x", "int32", [1], 7, "int8"]]), b"\x00" * 7], "cannot be compressed"),
        ([header(t=[["x", "float32", [8], 9, "int8:zz"]]), b"\x00" * 9], "compression"),
        ([header(t=[["x", "float32", [8], 9, "fp16"]]), b"\x00" * 9], "fp16 payload"),
        (
            [header(t=[["x", "uint8", [1], 1, None], ["x", "uint8", [1], 1, None]]), b"a", b"b"],
            "appears twice",
        ),
    ],
)
def test_decode_names_the_violated_rule(parts: list[bytes], reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason) as info:
        decode(parts)
    assert info.value.reason


def test_decode_enforces_the_maximum_message_size() -> None:
    parts = as_bytes(encode(Frame("t", tensors={"x": np.zeros(1000, np.float32)})))
    decode(parts, max_message_bytes=5000)
    with pytest.raises(ProtocolError, match="exceeds the limit of 1000"):
        decode(parts, max_message_bytes=1000)


def test_header_claims_are_checked_before_allocation() -> None:
    """A header declaring a huge tensor with a tiny frame fails on the byte check."""
    claim = [["x", "float32", [10**9, 10**9], 4 * 10**18, None]]
    with pytest.raises(ProtocolError, match="declares"):
        decode([header(t=claim), b"\x00" * 4])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=0, max_size=4))
def test_garbage_only_ever_raises_protocol_error(parts: list[bytes]) -> None:
    with contextlib.suppress(ProtocolError):  # anything else fails the test
        decode(parts)


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["v", "k", "id", "s", "m", "t", "x"]),
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers(-(2**63), 2**64 - 1)
            | st.floats()
            | st.text(max_size=5),
            lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=3), inner),
            max_leaves=10,
        ),
    ),
    st.lists(st.binary(max_size=16), max_size=3),
)
def test_structured_garbage_headers_only_raise_protocol_error(
    fields: dict[str, object], tensors: list[bytes]
) -> None:
    with contextlib.suppress(ProtocolError):
        decode([msgpack.packb(fields), *tensors])


def test_error_frames_raise_remote_error_with_type_and_message() -> None:
    frame = decode(as_bytes(encode(error_frame(5, "InputError", "bad shape", sender="agent-1"))))
    assert frame.kind == ERROR_KIND and frame.is_error and frame.request_id == 5
    with pytest.raises(RemoteError) as info:
        raise_if_error(frame)
    assert info.value.error_type == "InputError"
    assert info.value.remote_message == "bad shape"
    assert info.value.peer == "agent-1"
    ok = Frame("ok")
    assert raise_if_error(ok) is ok


def test_peek_request_id_reads_ids_of_invalid_messages() -> None:
    assert peek_request_id([header(id=42, v=99)]) == 42
    assert peek_request_id([b"\xc1"]) == 0
    assert peek_request_id([msgpack.packb({"id": -3})]) == 0


def test_fp16_compression_halves_bytes_and_keeps_values_close() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 33)).astype(np.float32)
    ids = np.arange(10, dtype=np.int64)
    parts = encode(Frame("t", tensors={"x": x, "ids": ids}), compression="fp16")
    assert memoryview(parts[1]).nbytes == x.size * 2
    got = decode(as_bytes(parts)).tensors
    assert got["x"].dtype == np.float32 and got["x"].shape == x.shape
    np.testing.assert_allclose(got["x"], x, rtol=1e-3, atol=1e-4)
    np.testing.assert_array_equal(got["ids"], ids)  # non-float tensors are never touched


@pytest.mark.parametrize("block", [1, 7, 64, 1000])
def test_int8_compression_error_is_within_half_a_block_scale(block: int) -> None:
    rng = np.random.default_rng(block)
    x = (rng.standard_normal(517) * rng.uniform(0.01, 100, 517)).astype(np.float32)
    x[3] = 0.0
    parts = encode(Frame("t", tensors={"x": x}), compression=f"int8:{block}")
    blocks = math.ceil(x.size / block)
    assert memoryview(parts[1]).nbytes == 4 * blocks + x.size
    got = decode(as_bytes(parts)).tensors["x"]
    padded = np.zeros(blocks * block, np.float32)
    padded[: x.size] = np.abs(x)
    scale = np.repeat(padded.reshape(blocks, block).max(axis=1) / 127, block)[: x.size]
    assert np.all(np.abs(got - x) <= scale / 2 + 1e-6 * np.abs(x) + 1e-30)


def test_int8_compression_of_all_zero_and_empty_tensors() -> None:
    tensors = {"z": np.zeros(10, np.float32), "e": np.zeros((0, 3), np.float16)}
    got = decode(as_bytes(encode(Frame("t", tensors=tensors), compression="int8"))).tensors
    np.testing.assert_array_equal(got["z"], tensors["z"])
    assert got["e"].shape == (0, 3) and got["e"].dtype == np.float16


def test_unknown_compression_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown compression"):
        encode(Frame("t"), compression="zstd")


def test_large_tensors_travel_split_and_join_back_exactly() -> None:
    from transports.wire import MIN_SPLIT_BYTES, SPLIT_BYTES

    big = np.arange(300_000, dtype=np.float32).reshape(1000, 300)  # 1.2 MB: 5 frames
    small = np.arange(3, dtype=np.int64)
    frame = Frame("run", 5, tensors={"big": big, "small": small, "empty": np.zeros(0, np.int8)})
    parts = encode(frame)
    assert [memoryview(p).nbytes for p in parts[1:6]] == [SPLIT_BYTES] * 4 + [
        big.nbytes - 4 * SPLIT_BYTES]
    assert len(parts) == 1 + 5 + 1 + 1
    got = decode([bytes(p) for p in parts])
    np.testing.assert_array_equal(got.tensors["big"], big)
    np.testing.assert_array_equal(got.tensors["small"], small)
    assert got.tensors["empty"].shape == (0,)
    # one zero-copy frame per tensor when splitting is off; both decode the same
    whole = encode(frame, split_bytes=None)
    assert len(whole) == 4 and np.shares_memory(np.frombuffer(whole[1], np.float32), big)
    np.testing.assert_array_equal(decode(whole).tensors["big"], big)
    # other piece sizes decode too (the receiver does not need to know the sender's)
    odd = encode(frame, split_bytes=MIN_SPLIT_BYTES + 4)
    np.testing.assert_array_equal(decode(odd).tensors["big"], big)
    # compressed payloads split as well
    scaled = big / 1000  # within float16's range
    packed = decode(encode(Frame("run", tensors={"big": scaled}), compression="fp16"))
    np.testing.assert_allclose(packed.tensors["big"], scaled, rtol=1e-3)
    with pytest.raises(ProtocolError, match="split_bytes must be"):
        encode(frame, split_bytes=1024)


def test_malformed_split_tensors_are_refused() -> None:
    from transports.wire import MIN_SPLIT_BYTES

    n = 4 * MIN_SPLIT_BYTES
    head = header(t=[["x", "uint8", [n], n, None]])
    piece = b"\x00" * MIN_SPLIT_BYTES
    assert decode([head, piece, piece, piece, piece]).tensors["x"].shape == (n,)
    with pytest.raises(ProtocolError, match="pieces under"):
        decode([head, piece, b"\x00" * 10, piece, piece, piece])
    with pytest.raises(ProtocolError, match="its frames have"):
        decode([head, piece, piece, piece])
    with pytest.raises(ProtocolError, match="its frames have"):
        decode([head, piece, piece, piece, piece + b"\x00"])
    with pytest.raises(ProtocolError, match="tensor frames arrived"):
        decode([head, piece, piece, piece, piece, b"\x00"])
    two = header(t=[["x", "uint8", [n], n, None], ["y", "uint8", [1], 1, None]])
    decoded = decode([two, piece, piece, piece, piece, b"\x01"])
    assert decoded.tensors["y"].tolist() == [1]
    with pytest.raises(ProtocolError, match=r"frames have|frame has"):
        decode([two, piece, piece, piece, b"\x01"])
