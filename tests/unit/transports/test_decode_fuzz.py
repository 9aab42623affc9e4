"""Every `Frame` decoder is total: on any input it returns a valid result or raises
`ProtocolError`, nothing else, and never allocates much more than it received.

Why: a receive loop catches `ProtocolError` to answer the peer and keep serving; any
other exception from one hostile or buggy message kills the agent (issue 9: a
60-byte header declaring shape ``[0, 2**64-1]`` did). The decoders turn an
unexpected error into a `ProtocolError` chained to it as a last line of defence;
these tests fail on that too (`__cause__` set), so each hole must be fixed at its
cause. The lean collective format (`datawire`) is fuzzed in `test_datawire_fuzz.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transports.compression import decompress
from transports.errors import ProtocolError
from transports.pieces import MAX_ELEMENTS, MIN_SPLIT_BYTES, join_pieces
from transports.wire import (
    ALLOWED_DTYPES,
    PROTOCOL_VERSION,
    Frame,
    decode,
    encode,
    numpy_dtype,
    peek_request_id,
)

Check = Callable[[Callable[[], Any], int], Any]
"""The `only_protocol_error` fixture (conftest.py): a call's result, None after a
ProtocolError of its own, a test failure for anything else or a huge allocation."""


def size(parts: list[bytes]) -> int:
    return sum(len(part) for part in parts)


def header(**overrides: object) -> bytes:
    base: dict[str, object] = {"v": PROTOCOL_VERSION, "k": "t", "id": 7, "s": "", "m": {}, "t": []}
    base.update(overrides)
    return msgpack.packb(base, use_bin_type=True)


def check_frame(frame: Frame | None) -> None:
    """A decoded frame holds what its type says, tensors numpy can use."""
    if frame is None:
        return
    assert isinstance(frame.kind, str) and type(frame.request_id) is int
    for name, tensor in frame.tensors.items():
        assert isinstance(name, str) and isinstance(tensor, np.ndarray)
        assert tensor.size * tensor.dtype.itemsize == tensor.nbytes
        assert len(tensor.tobytes()) == tensor.nbytes  # every byte is readable


# ------------------------------------------------------------------ strategies

WILD_INTS = st.sampled_from(
    [0, 1, 2, 3, 4, 7, 8, 2**31, 2**32, 2**40, 2**40 + 1, 2**62, 2**63 - 1, 2**64 - 1, -1, -(2**63)]
)
ints = st.integers(-(2**63), 2**64 - 1)  # what msgpack can carry
dims = st.one_of(st.integers(0, 6), WILD_INTS, st.booleans(), st.floats(), st.text(max_size=2))
shapes = st.one_of(
    st.lists(dims, max_size=6),
    st.lists(st.integers(0, 3), min_size=30, max_size=70),
    st.none(), ints, st.text(max_size=3),
)
dtype_names = st.one_of(
    st.sampled_from([*ALLOWED_DTYPES, "float64", "object", "<f4", "", "V8"]),
    st.integers(-2, 300), st.none(), st.lists(st.text(max_size=3), max_size=2),
)
TAGS = [
    "fp16", "int8", "int8:64", "int8:1", "int8:1048576", "int8:1048577", "int8:0", "int8:-1",
    "int8:+5", "int8: 5", "int8:1_0", "int8:007", "int8:\u0663", "int8:" + "9" * 5000,
    "int8:64 ", "FP16", "zstd", "",
]
tags = st.one_of(st.none(), st.sampled_from(TAGS), st.text(max_size=8), ints, st.booleans())
nbytes_values = st.one_of(st.integers(0, 80), WILD_INTS, st.booleans(), st.floats(), st.none())
tensor_metas = st.one_of(
    st.tuples(st.one_of(st.text(max_size=3), ints, st.none()), dtype_names, shapes,
              nbytes_values, tags).map(list),
    st.lists(st.integers(0, 3), max_size=7),
    st.none(), st.text(max_size=3),
)
plain = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=4)
    | st.binary(max_size=4),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)
headers = st.fixed_dictionaries(
    {
        "v": st.one_of(st.just(PROTOCOL_VERSION), st.just(True), st.just(1.0), st.integers(0, 3)),
        "k": st.one_of(st.just("t"), st.text(max_size=70), ints, st.none()),
        "id": st.one_of(st.integers(0, 2**64 - 1), WILD_INTS, st.booleans(), st.text(max_size=2)),
        "s": st.one_of(st.just(""), st.text(max_size=3), st.binary(max_size=3), ints),
        "m": st.one_of(st.dictionaries(st.text(max_size=3), plain, max_size=3), plain),
        "t": st.one_of(st.lists(tensor_metas, max_size=4), tensor_metas),
    },
    optional={"x": plain},
)
EDGE_DIMS = st.sampled_from([0, 0, 1, 2, 3, 2**20, 2**40, 2**40 + 1, 2**62, 2**64 - 1])
wild_entries = st.tuples(
    st.text(max_size=2),
    st.sampled_from(ALLOWED_DTYPES),
    st.lists(st.one_of(st.integers(0, 4), EDGE_DIMS), max_size=5),
    st.one_of(st.none(), st.sampled_from(TAGS)),
)
"""Tensor entries whose every field has the right type, with shapes and tags at and
past every bound: the envelope is valid, so decoding reaches the shape checks."""
frame_lists = st.lists(
    st.one_of(st.binary(max_size=64), st.sampled_from([0, 1, 2, 4, 8, 16, 24]).map(bytes)),
    max_size=6,
)


def implied_nbytes(dtype_name: object, shape: object, tag: object) -> int | None:
    """The payload size a tensor entry implies, if it implies a small one: so that
    fuzzing gets past the byte checks to what follows them (reshape, decompress)."""
    if not isinstance(dtype_name, str) or dtype_name not in ALLOWED_DTYPES:
        return None
    if not isinstance(shape, list) or any(type(d) is not int or d < 0 for d in shape):
        return None
    count = int(np.prod([int(d) for d in shape], dtype=object)) if shape else 1
    if tag is None:
        nbytes = count * numpy_dtype(dtype_name).itemsize
    elif tag == "fp16":
        nbytes = 2 * count
    elif isinstance(tag, str) and tag[:5] == "int8:" and tag[5:].isdigit() and len(tag) < 12:
        nbytes = 4 * -(-count // max(1, int(tag[5:]))) + count
    else:
        return None
    return nbytes if nbytes <= 4096 else None


def frames_for(header_map: dict[str, Any], data: st.DataObject) -> list[bytes]:
    """Tensor frames that fit what the header declares where that is small (so
    decoding gets past the byte checks), plus random ones."""
    parts: list[bytes] = []
    metas = header_map["t"] if isinstance(header_map["t"], list) else []
    for meta in metas:
        declared = meta[3] if isinstance(meta, list) and len(meta) == 5 else None
        if type(declared) is int and 0 <= declared <= 4096 and data.draw(st.booleans()):
            parts.append(data.draw(st.binary(min_size=declared, max_size=declared)))
        else:
            parts.append(data.draw(st.binary(max_size=32)))
    return parts + data.draw(st.lists(st.binary(max_size=16), max_size=2))


def consistent_meta(data: st.DataObject) -> tuple[list[object], bytes]:
    """A tensor entry whose shape, dtype, byte count and tag agree, with its payload:
    decodes unless the payload's values break a rule (bool bytes)."""
    dtype_name = data.draw(st.sampled_from(ALLOWED_DTYPES))
    shape = data.draw(st.lists(st.integers(0, 5), max_size=4))
    count = int(np.prod(shape)) if shape else 1
    tag = None
    if dtype_name in ("float32", "float16"):
        tag = data.draw(
            st.sampled_from([None, "fp16", "int8:1", "int8:3", "int8:64", "int8:1048576"])
        )
    if tag is None:
        nbytes = count * numpy_dtype(dtype_name).itemsize
    elif tag == "fp16":
        nbytes = 2 * count
    else:
        block = int(tag.split(":")[1])
        nbytes = 4 * -(-count // block) + count
    return [data.draw(st.text(max_size=3)), dtype_name, shape, nbytes, tag], data.draw(
        st.binary(min_size=nbytes, max_size=nbytes)
    )


# ------------------------------------------------------------------ properties


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=5))
def test_arbitrary_bytes_only_raise_protocol_error(
    only_protocol_error: Check, parts: list[bytes]
) -> None:
    check_frame(only_protocol_error(lambda: decode(parts), size(parts)))
    request_id = peek_request_id(parts)
    assert type(request_id) is int and 0 <= request_id < 2**64


@settings(max_examples=400, deadline=None)
@given(headers, st.data())
def test_wild_headers_only_raise_protocol_error(
    only_protocol_error: Check, header_map: dict[str, Any], data: st.DataObject
) -> None:
    parts = [msgpack.packb(header_map, use_bin_type=True), *frames_for(header_map, data)]
    check_frame(only_protocol_error(lambda: decode(parts), size(parts)))
    request_id = peek_request_id(parts)
    assert type(request_id) is int and 0 <= request_id < 2**64


@settings(max_examples=300, deadline=None)
@given(st.lists(wild_entries, min_size=1, max_size=3), st.data())
def test_wild_shapes_and_tags_in_a_valid_envelope_only_raise_protocol_error(
    only_protocol_error: Check,
    entries: list[tuple[str, str, list[int], str | None]],
    data: st.DataObject,
) -> None:
    metas: list[list[object]] = []
    parts: list[bytes] = []
    for name, dtype_name, shape, tag in entries:
        implied = implied_nbytes(dtype_name, shape, tag)
        nbytes = implied if implied is not None else data.draw(nbytes_values)
        metas.append([name, dtype_name, shape, nbytes, tag])
        fits = type(nbytes) is int and 0 <= nbytes <= 4096
        parts.append(bytes(nbytes) if fits else data.draw(st.binary(max_size=8)))
    parts.insert(0, header(t=metas))
    check_frame(only_protocol_error(lambda: decode(parts), size(parts)))


@settings(max_examples=300, deadline=None)
@given(st.data(), st.integers(0, 4), frame_lists)
def test_consistent_tensors_decode_or_break_a_named_rule(
    only_protocol_error: Check, data: st.DataObject, n: int, extra: list[bytes]
) -> None:
    entries = [consistent_meta(data) for _ in range(n)]
    parts = [header(t=[meta for meta, _ in entries]), *(payload for _, payload in entries)]
    if data.draw(st.booleans()):
        parts += extra  # mismatched frame counts
    frame = only_protocol_error(lambda: decode(parts), size(parts))
    check_frame(frame)
    names = {meta[0] for meta, _ in entries}
    if frame is not None:
        assert set(frame.tensors) == names and len(names) == n


@settings(max_examples=200, deadline=None)
@given(st.data(), st.integers(1, 4))
def test_split_pieces_in_any_sizes_only_raise_protocol_error(
    only_protocol_error: Check, data: st.DataObject, n: int
) -> None:
    sizes = st.sampled_from([0, 1, 100, MIN_SPLIT_BYTES - 1, MIN_SPLIT_BYTES, MIN_SPLIT_BYTES + 3])
    pieces = [bytes(data.draw(sizes)) for _ in range(n)]
    declared = data.draw(st.sampled_from([sum(map(len, pieces)), sum(map(len, pieces)) + 1,
                                          len(pieces[0]), 2 * MIN_SPLIT_BYTES]))
    parts = [header(t=[["x", "uint8", [declared], declared, None]]), *pieces]
    frame = only_protocol_error(lambda: decode(parts), size(parts))
    if frame is not None:
        assert frame.tensors["x"].nbytes == declared


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_valid_messages_only_raise_protocol_error(
    only_protocol_error: Check, data: st.DataObject
) -> None:
    shape = tuple(data.draw(st.lists(st.integers(0, 4), max_size=3)))
    dtype = data.draw(st.sampled_from(["float32", "float16", "int64", "bool", "uint8"]))
    tensor = np.ones(shape, dtype)
    compression = data.draw(st.sampled_from([None, "fp16", "int8:2"]))
    parts = [bytes(p) for p in encode(Frame("t", 3, meta={"a": [1]}, tensors={"x": tensor}),
                                      compression=compression)]
    target = data.draw(st.integers(0, len(parts) - 1))
    body = bytearray(parts[target])
    for _ in range(data.draw(st.integers(1, 3))):
        action = data.draw(st.sampled_from(["flip", "cut", "grow"]))
        if action == "flip" and body:
            body[data.draw(st.integers(0, len(body) - 1))] ^= 1 << data.draw(st.integers(0, 7))
        elif action == "cut" and body:
            del body[data.draw(st.integers(0, len(body) - 1)):]
        else:
            body += data.draw(st.binary(min_size=1, max_size=4))
    parts[target] = bytes(body)
    check_frame(only_protocol_error(lambda: decode(parts), size(parts)))


@settings(max_examples=300, deadline=None)
@given(
    st.data(),
    st.one_of(tags, st.sampled_from(TAGS)),
    st.sampled_from(["float32", "float16", "bfloat16", "int8", "bool", "int64"]),
    st.one_of(shapes, st.lists(st.one_of(st.integers(0, 4), EDGE_DIMS), max_size=5)),
)
def test_decompress_only_raises_protocol_error(
    only_protocol_error: Check, data: st.DataObject, tag: object, dtype_name: str, shape: Any
) -> None:
    dtype = numpy_dtype(dtype_name)
    implied = implied_nbytes("float32", shape, tag)
    if implied is not None and data.draw(st.booleans()):
        payload = data.draw(st.binary(min_size=implied, max_size=implied))
    else:
        payload = data.draw(st.binary(max_size=64))
    result = only_protocol_error(lambda: decompress(payload, tag, dtype, shape), len(payload))
    if result is not None:
        assert result.dtype == dtype and list(result.shape) == shape


# ------------------------------------------------------------------ regressions

CRASH_SHAPES = [[0, 2**64 - 1], [2**40, 2**40, 0], [0, 2**62], [0, 2**41], [2**63 - 1, 0, 5]]


@pytest.mark.parametrize("shape", CRASH_SHAPES)
@pytest.mark.parametrize("tag", [None, "fp16", "int8:64"])
def test_empty_shapes_numpy_cannot_build_are_protocol_errors(
    shape: list[int], tag: str | None
) -> None:
    """Issue 9, finding 1: these killed the agent with ValueError from reshape."""
    parts = [header(t=[["x", "float32", shape, 0, tag]]), b""]
    with pytest.raises(ProtocolError, match=f"more than {MAX_ELEMENTS} values") as info:
        decode(parts)
    assert info.value.__cause__ is None
    assert peek_request_id(parts) == 7


@pytest.mark.parametrize("shape", [[0, 2**20], [2**20, 2**20, 0], [0], [1, 0, 2**40]])
def test_empty_shapes_within_the_bound_still_decode(shape: list[int]) -> None:
    tensor = decode([header(t=[["x", "int64", shape, 0, None]]), b""]).tensors["x"]
    assert list(tensor.shape) == shape and tensor.size == 0


@pytest.mark.parametrize(
    ("meta", "payload", "reason"),
    [
        (["x", "uint8", [1], -1, None], b"\x00", "nbytes must be a non-negative int"),
        (["x", "uint8", [1], 2**64 - 1, None], b"\x00", "nbytes must be a non-negative int"),
        (["x", "uint8", [4], True, None], b"\x00", "nbytes must be"),
        (["x", "uint8", [True], 1, None], b"\x00", "non-negative ints"),
        (["x", "uint8", [1.0], 1, None], b"\x00", "non-negative ints"),
        (["x", "bool", [2], 2, None], b"\x01\x02", "bool bytes must be 0 or 1"),
        (["x", "bool", [2], 2, "fp16"], b"\x01\x00", "bool cannot be compressed"),
        (["x", "uint8", [40] + [1] * 39, 40, None], bytes(40), "40 dims"),
        (["x", ["float32"], [1], 4, None], bytes(4), "not allowed"),
        ([b"x", "uint8", [1], 1, None], b"\x00", "name must be a str"),
    ],
)
def test_fields_are_checked_by_type_and_range(
    meta: list[object], payload: bytes, reason: str
) -> None:
    with pytest.raises(ProtocolError, match=reason):
        decode([header(t=[meta]), payload])


def test_valid_bool_tensors_decode() -> None:
    tensor = decode([header(t=[["x", "bool", [3], 3, None]]), b"\x01\x00\x01"]).tensors["x"]
    assert tensor.tolist() == [True, False, True]


def test_a_byte_count_above_the_message_limit_is_refused_as_such() -> None:
    parts = [header(t=[["x", "uint8", [2**40], 2**40, None]]), b"\x00"]
    with pytest.raises(ProtocolError, match="nbytes must be a non-negative int ≤ 1048576"):
        decode(parts, max_message_bytes=1 << 20)


@pytest.mark.parametrize(
    "parts",
    [
        [header(t=[["x", "uint8", [1], 1, None]])],
        [header(t=[["x", "uint8", [1], 1, None]]), b"\x00", b"\x00"],
        [header(), b""],
        [header(t=[["x", "uint8", [0], 0, None], ["y", "uint8", [0], 0, None]]), b""],
    ],
)
def test_mismatched_frame_counts_are_refused(parts: list[bytes]) -> None:
    with pytest.raises(ProtocolError, match="tensor frames arrived"):
        decode(parts)


def test_version_must_be_the_integer_itself() -> None:
    for version in (True, 1.0):
        with pytest.raises(ProtocolError, match="unsupported protocol version"):
            decode([header(v=version)])


@pytest.mark.parametrize(
    "tag",
    ["int8", "int8:0", "int8:-1", "int8:1048577", "int8:" + "9" * 5000, "int8:1_0",
     "int8: 5", "int8:+5", "int8:007", "int8:\u0663", "fp16 ", "FP16"],
)
def test_compression_tags_follow_a_strict_grammar(tag: str) -> None:
    parts = [header(t=[["x", "float32", [3], 15, tag]]), bytes(15)]
    with pytest.raises(ProtocolError, match="bad compression tag") as info:
        decode(parts)
    assert len(str(info.value)) < 200  # a 5000-digit tag is not echoed into the log


def test_a_huge_int8_block_costs_memory_of_the_values_only(only_protocol_error: Check) -> None:
    """One value under a 2**20 block used to zero a 4 MiB padded block per tensor."""
    n = 200
    metas = [[f"x{i}", "float32", [1], 5, "int8:1048576"] for i in range(n)]
    parts = [header(t=metas), *([b"\x00\x00\x80\x3f\x7f"] * n)]  # scale 1.0, value 127
    frame = only_protocol_error(lambda: decode(parts), size(parts))
    assert frame is not None and frame.tensors["x0"].tolist() == [127.0]


def test_non_finite_int8_scales_decode_without_warnings(only_protocol_error: Check) -> None:
    scales = np.array([np.inf, np.nan], np.float32).view(np.uint8).tobytes()
    parts = [header(t=[["x", "float16", [4], 12, "int8:2"]]), scales + bytes([0, 1, 1, 0])]
    frame = only_protocol_error(lambda: decode(parts), size(parts))
    assert frame is not None and not np.isfinite(frame.tensors["x"]).any()


def test_join_pieces_refuses_an_index_past_the_frames() -> None:
    views = [memoryview(b"ab")]
    with pytest.raises(ProtocolError, match="no frame left"):
        join_pieces(views, 1, 2, 0, "x")
    with pytest.raises(ProtocolError, match="declares 5 bytes"):
        join_pieces(views, 0, 5, 10, "x")  # more spare frames claimed than exist


@pytest.mark.parametrize(
    "parts",
    [[], [b""], [msgpack.packb([1])], [msgpack.packb({"id": -1})], [msgpack.packb({"id": 1.5})],
     [msgpack.packb({"id": True})], [msgpack.packb({"id": "5"})], [bytes(2 << 20)],
     [msgpack.packb({(1, 2): 3})]],
)
def test_peek_request_id_never_raises(parts: list[bytes]) -> None:
    assert peek_request_id(parts) == 0
