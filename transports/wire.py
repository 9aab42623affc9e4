"""The wire format: one `Frame` = a msgpack header + one raw ZeroMQ frame per tensor.

Why this shape: activations are large and latency-critical, so tensor bytes
never pass through msgpack (which would copy them twice); they travel as their
own ZeroMQ frames, handed to libzmq and read back with ``np.frombuffer``
without copies. The header carries what is needed to rebuild and *check* them.

Header (msgpack map)::

    {"v": 1, "k": kind, "id": request_id, "s": sender, "m": meta,
     "t": [[name, dtype, shape, nbytes, compression-or-None], ...]}

Everything received is validated before use (`decode`): a peer may be buggy,
old, or hostile, and a receiver must answer it with an error and keep serving,
never crash or allocate what a header claims. Every field is checked by type and
range before use, in O(fields) work (the one O(bytes) check: bool tensors hold only
0 and 1), so the only error `decode` raises is `ProtocolError`. Pickle is never used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from transports import compression as _compression
from transports.errors import ProtocolError, RemoteError
from transports.pieces import MAX_DIMS as MAX_DIMS
from transports.pieces import MIN_SPLIT_BYTES as MIN_SPLIT_BYTES  # re-exported, as before
from transports.pieces import SPLIT_BYTES as SPLIT_BYTES
from transports.pieces import byte_view as byte_view
from transports.pieces import checked_shape, only_protocol_errors, split_pieces
from transports.pieces import join_pieces as join_pieces
from transports.pieces import part_view as part_view

PROTOCOL_VERSION = 1
"""Bumped on any incompatible header change; a receiver refuses other versions."""

ERROR_KIND = "error"
"""`Frame.kind` of error replies (see `error_frame`)."""

DEFAULT_MAX_MESSAGE_BYTES = 512 * 1024 * 1024
"""Largest message (header + tensors) a receiver accepts by default: big enough for a
model shard sent in one frame, small enough that a bogus peer cannot exhaust RAM."""

MAX_HEADER_BYTES = 1024 * 1024
"""Largest msgpack header: metadata is small; a bigger header is malformed or hostile."""

MAX_META_DEPTH = 16
"""Deepest nesting accepted in `Frame.meta`."""

MAX_KIND_LENGTH = 64

ALLOWED_DTYPES: tuple[str, ...] = (
    "float32",
    "float16",
    "bfloat16",
    "int8",
    "uint8",
    "int32",
    "int64",
    "bool",
)
"""Tensor dtypes that may cross the wire. Object and structured dtypes never may:
their bytes are pointers or layouts, not values. bfloat16 travels as its 16-bit
pattern; it decodes to `ml_dtypes.bfloat16` when that package is importable (it is
a dependency of onnx), otherwise to uint16."""

Buffer = bytes | memoryview
"""One part of an encoded message."""


@dataclass
class Frame:
    """One message: what it is (`kind`), which request it answers, who sent it,
    plain metadata and named tensors."""

    kind: str
    request_id: int = 0
    sender: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def is_error(self) -> bool:
        return self.kind == ERROR_KIND


def _bfloat16_dtype() -> np.dtype[Any] | None:
    try:
        import ml_dtypes
    except ImportError:  # pragma: no cover - ml_dtypes ships with onnx
        return None
    bf16: np.dtype[Any] = np.dtype(ml_dtypes.bfloat16)
    return bf16


_BF16 = _bfloat16_dtype()
_NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(name) for name in ALLOWED_DTYPES if name != "bfloat16"
}
_NUMPY_DTYPES["bfloat16"] = _BF16 if _BF16 is not None else np.dtype(np.uint16)
# dtype -> wire name by dict lookup: `dtype.name` builds a string each call (µs on the hot path)
_WIRE_NAMES: dict[np.dtype[Any], str] = {
    dtype: name for name, dtype in _NUMPY_DTYPES.items() if name != "bfloat16"
}
if _BF16 is not None:
    _WIRE_NAMES[_BF16] = "bfloat16"
_BOOL = _NUMPY_DTYPES["bool"]
_HEADER_KEYS = frozenset({"v", "k", "id", "s", "m", "t"})
_SCALARS = frozenset({str, int, float, bool, bytes, type(None)})


def wire_dtype(dtype: np.dtype[Any]) -> str:
    """The wire name of a numpy dtype; ProtocolError if it may not be sent."""
    name = _WIRE_NAMES.get(dtype)
    if name is None and not dtype.isnative and dtype.fields is None:
        name = _WIRE_NAMES.get(dtype.newbyteorder("="))
    if name is None:
        raise ProtocolError(
            f"dtype {dtype} cannot be sent; allowed: {', '.join(ALLOWED_DTYPES)} "
            "(cast the tensor first, e.g. float64 -> float32)"
        )
    return name


def native_contiguous(array: np.ndarray) -> np.ndarray:
    """`array` in native byte order and C order, as sent: copied only if it is not."""
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    if not array.flags.c_contiguous:  # np.ascontiguousarray would turn 0-d into 1-d
        array = array.copy(order="C")
    return array


def encode(
    frame: Frame,
    *,
    compression: str | _compression.Compression | None = None,
    split_bytes: int | None = SPLIT_BYTES,
) -> list[Buffer]:
    """Encode `frame` as [header, tensor bytes...] without copying tensor data.

    Tensors that are not C-contiguous are made contiguous (a copy); `compression`
    (``"fp16"``, ``"int8"``, ``"int8:<block>"``) applies to float tensors only.
    A tensor over `split_bytes` goes as consecutive frames of that size (`SPLIT_BYTES`).
    Raises ProtocolError for a frame that cannot be sent (bad dtype, names, meta).
    """
    if not isinstance(frame.kind, str) or not 0 < len(frame.kind) <= MAX_KIND_LENGTH:
        raise ProtocolError(f"frame kind must be a non-empty str of ≤ {MAX_KIND_LENGTH} chars")
    if split_bytes is not None and split_bytes < MIN_SPLIT_BYTES:
        raise ProtocolError(f"split_bytes must be at least {MIN_SPLIT_BYTES}")
    method = _compression.parse_compression(compression)
    metas: list[list[Any]] = []
    buffers: list[Buffer] = []
    for name, tensor in frame.tensors.items():
        if not isinstance(name, str):
            raise ProtocolError(f"tensor names must be str, got {name!r}")
        array = np.asarray(tensor)
        dtype_name = wire_dtype(array.dtype)
        array = native_contiguous(array)
        tag: str | None = None
        if method is not None and _compression.compressible(array.dtype):
            payload = _compression.compress(array, method)
            tag = method.tag
        else:
            payload = array
        metas.append([name, dtype_name, list(array.shape), payload.nbytes, tag])
        buffers.extend(split_pieces(byte_view(payload), split_bytes))
    header = {
        "v": PROTOCOL_VERSION,
        "k": frame.kind,
        "id": int(frame.request_id),
        "s": frame.sender,
        "m": frame.meta,
        "t": metas,
    }
    try:
        packed = msgpack.packb(header, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as error:
        raise ProtocolError(
            f"frame meta is not plain data ({error}); use str/int/float/bool/None/bytes/list/dict"
        ) from None
    return [packed, *buffers]


def numpy_dtype(name: str) -> np.dtype[Any]:
    """The numpy dtype of an allowed wire dtype name (bfloat16: ml_dtypes' or uint16)."""
    return _NUMPY_DTYPES[name]


def _check_plain(value: Any, depth: int = 0) -> None:
    if depth > MAX_META_DEPTH:
        raise ProtocolError(f"meta nested deeper than {MAX_META_DEPTH} levels")
    kind = type(value)
    if kind in _SCALARS:
        return
    if kind is list:
        for item in value:
            if type(item) not in _SCALARS:
                _check_plain(item, depth + 1)
        return
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise ProtocolError(f"meta keys must be str, got {type(key).__name__}")
            if type(item) not in _SCALARS:
                _check_plain(item, depth + 1)
        return
    raise ProtocolError(f"meta holds a {type(value).__name__}, which is not plain data")


def _decode_header(view: memoryview, max_message_bytes: int) -> dict[str, Any]:
    if view.nbytes > min(MAX_HEADER_BYTES, max_message_bytes):
        raise ProtocolError(f"header of {view.nbytes} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = msgpack.unpackb(
            view, raw=False, strict_map_key=True, use_list=True
        )
    except Exception as error:  # msgpack raises several unrelated types on garbage
        raise ProtocolError(f"header is not valid msgpack ({type(error).__name__})") from None
    if type(header) is not dict:
        raise ProtocolError(f"header must be a msgpack map, got {type(header).__name__}")
    version = header.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"unsupported protocol version {repr(version)[:32]}; "
            f"this build speaks {PROTOCOL_VERSION} "
            "(upgrade edge-runtime on both ends to the same release)"
        )
    if header.keys() != _HEADER_KEYS:
        keys = sorted(str(key)[:16] for key in header)[:8]
        raise ProtocolError(f"header keys {keys} != {sorted(_HEADER_KEYS)}")
    kind, request_id, sender = header["k"], header["id"], header["s"]
    if type(kind) is not str or not 0 < len(kind) <= MAX_KIND_LENGTH:
        raise ProtocolError("header kind must be a non-empty short str")
    if type(request_id) is not int or not 0 <= request_id < 2**64:
        raise ProtocolError("header request id must be an int in [0, 2**64)")
    if type(sender) is not str:
        raise ProtocolError("header sender must be a str")
    if type(header["m"]) is not dict:
        raise ProtocolError("header meta must be a map")
    _check_plain(header["m"])
    if type(header["t"]) is not list:
        raise ProtocolError("header tensor list must be an array")
    return header


def _tensor_layout(
    meta: Any, max_message_bytes: int
) -> tuple[str, str, np.dtype[Any], tuple[int, ...], int, int, str | None]:
    """(name, how errors name it, dtype, shape, values, nbytes, compression tag) of one
    tensor's header entry, each checked by type and range (a tag by `compression`)."""
    if type(meta) is not list or len(meta) != 5:
        raise ProtocolError("tensor meta must be [name, dtype, shape, nbytes, compression]")
    name, dtype_name, shape, nbytes, tag = meta
    if type(name) is not str:
        raise ProtocolError("tensor name must be a str")
    what = f"tensor {name[:64]!r}"  # errors are logged: a name may be 1 MB long
    dtype = _NUMPY_DTYPES.get(dtype_name) if type(dtype_name) is str else None
    if dtype is None:
        raise ProtocolError(f"{what}: dtype {str(dtype_name)[:32]!r} is not allowed")
    if type(shape) is not list:
        raise ProtocolError(f"{what}: shape must be a list of ≤ {MAX_DIMS} dims")
    dims, count = checked_shape(shape, what)
    if type(nbytes) is not int or not 0 <= nbytes <= max_message_bytes:
        raise ProtocolError(
            f"{what}: nbytes must be a non-negative int ≤ {max_message_bytes}"
        )
    if tag is not None and type(tag) is not str:
        raise ProtocolError(f"{what}: compression must be a str or nil")
    if tag is None and count * dtype.itemsize != nbytes:
        raise ProtocolError(
            f"{what}: shape {shape} × {dtype.itemsize} bytes "
            f"!= {nbytes} bytes declared"
        )
    return name, what, dtype, dims, count, nbytes, tag


def decode(
    parts: Sequence[Any], *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> Frame:
    """Decode and validate a received message (bytes, memoryviews or zmq.Frames).

    Uncompressed tensors are views on the received buffers (no copy): read-only over
    bytes, writable over zmq.Frames (which nothing else holds), not always aligned.
    Raises ProtocolError naming the violated rule for anything malformed, and only
    ProtocolError (`pieces.only_protocol_errors`)."""
    return only_protocol_errors(_decode, parts, max_message_bytes, "message")


def _decode(parts: Sequence[Any], max_message_bytes: int) -> Frame:
    if not parts:
        raise ProtocolError("empty message")
    views = [part_view(part) for part in parts]
    total = 0
    for view in views:
        total += view.nbytes
    if total > max_message_bytes:
        raise ProtocolError(
            f"message of {total} bytes exceeds the limit of {max_message_bytes} "
            "(raise max_message_bytes on the receiver, or send smaller pieces)"
        )
    header = _decode_header(views[0], max_message_bytes)
    metas = header["t"]
    if len(metas) > len(views) - 1 or (not metas and len(views) > 1):
        raise ProtocolError(
            f"header declares {len(metas)} tensors but {len(views) - 1} tensor frames arrived"
        )
    tensors: dict[str, np.ndarray] = {}
    index = 1
    for position, meta in enumerate(metas):
        name, what, dtype, shape, count, nbytes, tag = _tensor_layout(meta, max_message_bytes)
        if name in tensors:
            raise ProtocolError(f"{what} appears twice")
        spare = len(views) - index - (len(metas) - position)  # frames beyond one per tensor
        view, used = join_pieces(views, index, nbytes, spare, what)
        index += used
        if tag is not None:
            tensors[name] = _compression.decompress(view, tag, dtype, shape, what)
            continue
        array = np.frombuffer(view, dtype=dtype, count=count)
        if len(shape) != 1:
            array = array.reshape(shape)
        if dtype is _BOOL and count and np.frombuffer(view, np.uint8).max() > 1:
            raise ProtocolError(f"{what}: bool bytes must be 0 or 1")
        tensors[name] = array
    if index != len(views):
        raise ProtocolError(
            f"header declares {len(metas)} tensors but {len(views) - 1} tensor frames arrived"
        )
    return Frame(header["k"], header["id"], header["s"], header["m"], tensors)


def peek_request_id(parts: Sequence[Any]) -> int:
    """Best-effort request id of a message that failed `decode` (0 if unreadable),
    so the error reply still reaches the request that caused it."""
    try:
        view = part_view(parts[0])
        if view.nbytes > MAX_HEADER_BYTES:
            return 0
        header = msgpack.unpackb(view, raw=False, strict_map_key=False)
    except Exception:  # anything unreadable simply has no id
        return 0
    request_id = header.get("id") if isinstance(header, dict) else None
    return request_id if type(request_id) is int and 0 <= request_id < 2**64 else 0


def error_frame(
    request_id: int,
    error_type: str,
    message: str,
    *,
    sender: str = "",
    details: dict[str, Any] | None = None,
) -> Frame:
    """An error reply to request `request_id`: `error_type` is the error's class name."""
    meta: dict[str, Any] = {"error_type": error_type, "message": message}
    if details:
        meta["details"] = details
    return Frame(kind=ERROR_KIND, request_id=request_id, sender=sender, meta=meta)


def raise_if_error(frame: Frame, peer: str = "") -> Frame:
    """Return `frame`, or raise RemoteError if it is an error frame."""
    if frame.kind == ERROR_KIND:
        error_type = frame.meta.get("error_type", "Error")
        message = frame.meta.get("message", "")
        raise RemoteError(str(error_type), str(message), peer or frame.sender)
    return frame
