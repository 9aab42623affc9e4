"""The lean wire format of collective data messages: a fixed binary header + the tensor.

Why not a `Frame`: a collective call on a small tensor is a handful of messages
whose cost is mostly per-message Python work, and the general format spends
~20-40 µs per message building, packing, unpacking and checking a msgpack map
(plus a second ZeroMQ frame, ~20 µs more on loopback with CURVE). A data message
of a collective always carries the same few fields, so it gets a fixed
`struct` header instead, and a small tensor travels in the *same* ZeroMQ frame
(one copy of ≤ `INLINE_MAX_BYTES`, cheaper than a second frame); a large one
follows as its own frame, zero-copy both ways, or in `pieces.SPLIT_BYTES` pieces
(joined with one copy) when larger still, as CURVE is much faster on such pieces.

Layout (little-endian)::

    magic "\\xc1C" | version u8 | dtype code u8 | ndim u8 | pad u8 | source u16 |
    step u32 | call sequence u64 | ndim × u64 dims | [tensor bytes if inline]

0xC1 is the one byte msgpack never uses, so a data message can never be taken
for a `Frame` header (a msgpack map) or the other way round. Control messages
of the group (ping, pong, abort) and compressed data stay `Frame`s.

Validation is as strict as `wire.decode`: magic and version, the dtype from
`wire.ALLOWED_DTYPES`, a shape numpy can build (`pieces.checked_shape`), byte
length == product of the shape × itemsize, the whole message within
`max_message_bytes`, bool bytes 0/1, a split tensor's pieces no smaller than
`pieces.MIN_SPLIT_BYTES`. Anything else is a `ProtocolError` (the only error
`decode_data` raises); the receiver drops it and keeps going.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from transports.errors import ProtocolError
from transports.pieces import (
    MAX_DIMS,
    MAX_ELEMENTS,
    MIN_SPLIT_BYTES,
    SPLIT_BYTES,
    byte_view,
    checked_shape,
    join_pieces,
    only_protocol_errors,
    part_view,
    split_pieces,
)
from transports.wire import (
    ALLOWED_DTYPES,
    DEFAULT_MAX_MESSAGE_BYTES,
    Buffer,
    native_contiguous,
    numpy_dtype,
    wire_dtype,
)

MAGIC = b"\xc1C"
VERSION = 1
"""Bumped on any incompatible change of the layout above."""

INLINE_MAX_BYTES = 64 * 1024
"""Tensors up to this size are copied into the header's frame (one ZeroMQ frame per
message); larger ones are sent as a second frame without copying. 64 KiB is pyzmq's
own copy threshold: below it a zero-copy send copies anyway."""

_FIXED = struct.Struct("<2sBBBxHIQ")
_DIMS = tuple(struct.Struct(f"<{ndim}Q") for ndim in range(MAX_DIMS + 1))
_CODES: dict[str, int] = {name: code for code, name in enumerate(ALLOWED_DTYPES)}
_DTYPES: tuple[np.dtype[Any], ...] = tuple(numpy_dtype(name) for name in ALLOWED_DTYPES)
_BOOL_CODE = _CODES["bool"]
_MAX_SOURCE = 0xFFFF
_MAX_STEP = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class DataMessage:
    """A decoded collective data message: call `seq`, `step`, `source` rank, `tensor`."""

    seq: int
    step: int
    source: int
    tensor: np.ndarray


def is_data_message(first_part: Any) -> bool:
    """True if a received message's first part starts like a data message."""
    view = part_view(first_part)
    return view.nbytes >= 2 and view[0] == 0xC1 and view[1] == 0x43


def encode_data(
    seq: int, step: int, source: int, array: np.ndarray, *, split_bytes: int | None = SPLIT_BYTES
) -> list[Buffer]:
    """[header + tensor] for small tensors, [header, tensor view] for large ones, and
    [header, pieces...] for those over `split_bytes` (None: never split).

    ProtocolError for a dtype that may not be sent (e.g. float64: cast first)."""
    code = _CODES[wire_dtype(array.dtype)]
    array = native_contiguous(array)
    if not 0 <= source <= _MAX_SOURCE or not 0 <= step <= _MAX_STEP or not 0 <= seq < 2**64:
        raise ProtocolError(f"collective data header out of range (seq {seq}, step {step})")
    shape = array.shape
    if len(shape) > MAX_DIMS:
        raise ProtocolError(f"a tensor of {len(shape)} dims cannot be sent (at most {MAX_DIMS})")
    header = (_FIXED.pack(MAGIC, VERSION, code, len(shape), source, step, seq)
              + _DIMS[len(shape)].pack(*shape))
    data = byte_view(array)
    if data.nbytes <= INLINE_MAX_BYTES:
        return [header + data]
    if split_bytes is None or data.nbytes <= split_bytes:
        return [header, data]
    if split_bytes < MIN_SPLIT_BYTES:
        raise ProtocolError(f"split_bytes must be at least {MIN_SPLIT_BYTES}")
    return [header, *split_pieces(data, split_bytes)]


def decode_data(
    parts: Sequence[Any], *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> DataMessage:
    """Decode and validate one data message (bytes, memoryviews or zmq.Frames).

    The tensor is a read-only view on the received buffer (no copy). ProtocolError,
    and only ProtocolError, for anything malformed (`pieces.only_protocol_errors`)."""
    return only_protocol_errors(_decode_data, parts, max_message_bytes, "data message")


def _decode_data(parts: Sequence[Any], max_message_bytes: int) -> DataMessage:
    if len(parts) == 1:  # the common case: header and tensor in one part
        view = part_view(parts[0])
        total = view.nbytes
    elif parts:
        views = [part_view(part) for part in parts]
        view = views[0]
        total = sum(piece.nbytes for piece in views)
    else:
        raise ProtocolError("empty collective data message")
    if total > max_message_bytes:
        raise ProtocolError(
            f"collective data message of {total} bytes exceeds the limit of {max_message_bytes}"
        )
    if view.nbytes < _FIXED.size:
        raise ProtocolError(f"collective data header of {view.nbytes} bytes is too short")
    magic, version, code, ndim, source, step, seq = _FIXED.unpack_from(view)
    if magic != MAGIC or version != VERSION:
        raise ProtocolError(
            f"collective data message of version {version}, this build speaks {VERSION} "
            "(upgrade edge-runtime on every member to the same release)"
        )
    if code >= len(_DTYPES):
        raise ProtocolError(f"collective data message with unknown dtype code {code}")
    if ndim > MAX_DIMS:
        raise ProtocolError(f"collective data tensor of {ndim} dims (at most {MAX_DIMS})")
    end = _FIXED.size + _DIMS[ndim].size
    if view.nbytes < end:
        raise ProtocolError("collective data header shorter than its declared shape")
    dtype = _DTYPES[code]
    shape: tuple[int, ...] = _DIMS[ndim].unpack_from(view, _FIXED.size)
    count = 1
    for dim in shape:  # u64 dims: non-negative ints, so only their product is checked
        count *= dim
    if count == 0 or count > MAX_ELEMENTS:  # an empty shape must still be one numpy builds
        shape, count = checked_shape(shape, "collective data tensor")
    nbytes = count * dtype.itemsize
    if len(parts) == 1:
        payload = view[end:]
    elif view.nbytes != end:
        raise ProtocolError("collective data header with trailing bytes before its tensor")
    elif len(views) == 2:
        payload = views[1]
    else:  # a large tensor in pieces (see pieces.SPLIT_BYTES)
        pieces = views[1:]
        payload, used = join_pieces(pieces, 0, nbytes, len(pieces) - 1, "collective data")
        if used != len(pieces):
            raise ProtocolError(f"collective data tensor followed by {len(pieces) - used} "
                                "more frames")
    if nbytes != payload.nbytes:
        raise ProtocolError(
            f"collective data tensor: shape {list(shape)} × {dtype.itemsize} bytes "
            f"!= {payload.nbytes} bytes received"
        )
    tensor = np.ndarray(shape, dtype, payload)  # a view on the received bytes
    if code == _BOOL_CODE and count and np.frombuffer(payload, np.uint8).max() > 1:
        raise ProtocolError("collective data tensor: bool bytes must be 0 or 1")
    return DataMessage(seq, step, source, tensor)
