"""Large tensors as several ZeroMQ frames: byte views, splitting and joining.

Why a module of its own: both wire formats (`transports.wire` for `Frame`s and
`transports.datawire` for collective data) send a large tensor as `SPLIT_BYTES`
pieces under CURVE and join them on receipt under the same rules, so the sizes,
the zero-copy byte views and the checked join live in one place.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from transports.errors import ProtocolError

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
    At most `spare` extra frames may be taken (the other tensors need theirs)."""
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
