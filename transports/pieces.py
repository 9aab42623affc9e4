"""Large tensors as several ZeroMQ frames: byte views, splitting and joining; and the
shape check every decoder shares.

Why a module of its own: both wire formats (`transports.wire` for `Frame`s and
`transports.datawire` for collective data) send a large tensor as `SPLIT_BYTES`
pieces under CURVE and join them on receipt under the same rules, so the sizes,
the zero-copy byte views, the checked join and the check of a declared shape
(`checked_shape`, also used by `transports.compression`) live in one place.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from transports.errors import ProtocolError

log = logging.getLogger(__name__)

T = TypeVar("T")

SPLIT_BYTES = 256 * 1024
"""Tensors larger than this leave as several ZeroMQ frames of this size (the last one
shorter); the decoder joins them with one copy. Why: libzmq's CURVE encrypts each frame
as one block and its cost grows faster than the frame: a 4 MiB tensor round trip took
~30 ms as one frame and ~14 ms as 256 KiB frames on the 2-core dev machine (128-512 KiB
all did about as well; 64 KiB was worse; up to 256 KiB one frame is as fast).
Unencrypted, one frame is as fast or faster up to ~1 MiB: senders pass
``split_bytes=security.split_bytes`` (None when insecure: one zero-copy frame per tensor)."""

MIN_SPLIT_BYTES = 64 * 1024
"""Smallest piece a split tensor may arrive in (all but its last): a peer cannot make a
receiver walk millions of tiny frames."""

MAX_DIMS = 32
"""Most dimensions a received tensor may declare (numpy's own limit is 64)."""

MAX_ELEMENTS = 1 << 40
"""Most values a received shape may span, counting only its non-zero dims: far above any
tensor an edge device holds, far below what makes numpy refuse a shape (see
`checked_shape`)."""


def checked_shape(shape: object, what: str) -> tuple[tuple[int, ...], int]:
    """A received `shape` as a tuple, and the number of values it holds; ProtocolError
    unless it is a list or tuple of at most `MAX_DIMS` non-negative ints whose non-zero
    dims multiply to at most `MAX_ELEMENTS`.

    Why the non-zero dims count: a shape such as ``[0, 2**64-1]`` holds no values, so
    every byte-count check passes, yet numpy refuses to build it (ValueError), which
    would escape a decoder. O(dims): this runs on every tensor received."""
    if type(shape) is not list and type(shape) is not tuple:
        raise ProtocolError(f"{what}: shape must be a list of dims")
    if len(shape) > MAX_DIMS:
        raise ProtocolError(f"{what}: {len(shape)} dims (at most {MAX_DIMS})")
    extent, empty = 1, False
    for dim in shape:
        if type(dim) is not int or dim < 0:
            raise ProtocolError(f"{what}: shape dims must be non-negative ints")
        if dim == 0:
            empty = True
            continue
        extent *= dim
        if extent > MAX_ELEMENTS:
            raise ProtocolError(f"{what}: shape declares more than {MAX_ELEMENTS} values")
    return tuple(shape), 0 if empty else extent


def byte_view(array: np.ndarray) -> memoryview:
    """A flat byte view of a C-contiguous array, without copying."""
    try:
        return array.data.cast("B")
    except (TypeError, ValueError, BufferError, NotImplementedError):  # e.g. bfloat16, 0-d
        return array.reshape(-1).view(np.uint8).data


def part_view(part: Any) -> memoryview:
    """A flat byte view of one received part (bytes, memoryview or zmq.Frame)."""
    buffer = getattr(part, "buffer", None)  # zmq.Frame received with copy=False
    view = memoryview(buffer if buffer is not None else part)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def split_pieces(data: memoryview, split_bytes: int | None) -> list[memoryview]:
    """`data` as the frames it leaves in: itself when it fits in `split_bytes` (or
    `split_bytes` is None), else consecutive views of that size (the last shorter)."""
    if split_bytes is None or data.nbytes <= split_bytes:
        return [data]
    return [data[i : i + split_bytes] for i in range(0, data.nbytes, split_bytes)]


def join_pieces(
    views: list[memoryview], index: int, nbytes: int, spare: int, name: str
) -> tuple[memoryview, int]:
    """The bytes of one tensor starting at frame `index`, and how many frames it took:
    the frame itself (zero-copy) or, for a split tensor, its pieces joined with one copy.
    At most `spare` extra frames may be taken (the other tensors need theirs).
    ProtocolError for anything that does not add up, never another error."""
    if not 0 <= index < len(views):
        raise ProtocolError(f"{name}: no frame left for its bytes")
    spare = min(spare, len(views) - index - 1)
    view = views[index]
    if view.nbytes == nbytes or view.nbytes > nbytes or spare <= 0:
        if view.nbytes != nbytes:
            raise ProtocolError(
                f"{name}: header declares {nbytes} bytes, frame has {view.nbytes}"
            )
        return view, 1
    total, used = 0, 0
    while total < nbytes and used <= spare:
        piece = views[index + used]
        if piece.nbytes < MIN_SPLIT_BYTES and total + piece.nbytes < nbytes:
            raise ProtocolError(
                f"{name}: split into pieces under {MIN_SPLIT_BYTES} bytes"
            )
        total += piece.nbytes
        used += 1
    if total != nbytes:
        raise ProtocolError(
            f"{name}: header declares {nbytes} bytes, its frames have {total}"
        )
    joined = np.empty(nbytes, np.uint8)
    offset = 0
    for piece in views[index : index + used]:
        joined[offset : offset + piece.nbytes] = np.frombuffer(piece, np.uint8)
        offset += piece.nbytes
    return joined.data, used


def only_protocol_errors(decode: Callable[[Sequence[Any], int], T], parts: Sequence[Any],
                         max_message_bytes: int, what: str) -> T:
    """`decode(parts, max_message_bytes)`, raising ProtocolError and nothing else.

    Every field is checked before use, so another error type is a bug in a decoder (a
    missing rule): it becomes a ProtocolError naming it, chained as its ``__cause__``,
    and is logged with its traceback, so that no message can ever kill a receive loop.
    Shared by both wire formats (`wire.decode`, `datawire.decode_data`)."""
    try:
        return decode(parts, max_message_bytes)
    except ProtocolError:
        raise
    except Exception as error:
        log.error("decoding a %s failed unexpectedly (%s): a validation rule is missing",
                  what, type(error).__name__, exc_info=True)
        raise ProtocolError(f"undecodable {what} ({type(error).__name__})") from error
