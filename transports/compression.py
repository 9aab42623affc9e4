"""Optional lossy compression of float activations on the wire.

Links between edge devices are slow (Wi-Fi: ~50 Mbit/s), so halving or
quartering the bytes of an activation can matter more than the arithmetic it
costs. Two methods, chosen per channel:

- ``"fp16"``: float32 → float16 (2× smaller, ~1e-3 relative error).
- ``"int8"`` / ``"int8:<block>"``: symmetric int8 with one float32 scale per block
  of `block` consecutive values (default 64): ~3.8× smaller, error ≤ scale/2 per
  value, where scale = max|x| of the block / 127. A per-block scale keeps one
  outlier from flattening the whole tensor.

Only floating tensors (float32, float16) are compressed; everything else passes
through untouched, because ids and masks must arrive exactly. The decoded tensor
has the dtype the sender had. Non-finite values are not preserved by ``int8``.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from dataclasses import dataclass

import numpy as np

from transports.errors import ProtocolError
from transports.pieces import checked_shape

log = logging.getLogger(__name__)

DEFAULT_INT8_BLOCK = 64
"""Values per int8 scale: small enough that an outlier only coarsens 64 values."""

MAX_INT8_BLOCK = 1 << 20
"""Largest block accepted from the wire (a bigger one is a malformed header)."""

_COMPRESSIBLE = ("float32", "float16")


@dataclass(frozen=True)
class Compression:
    """A compression method: ``fp16`` or ``int8`` with a block size."""

    method: str
    block: int = DEFAULT_INT8_BLOCK

    def __post_init__(self) -> None:
        if self.method not in ("fp16", "int8"):
            raise ValueError(
                f"unknown compression {self.method!r}; use 'fp16', 'int8' or 'int8:<block>'"
            )
        if not 1 <= self.block <= MAX_INT8_BLOCK:
            raise ValueError(f"int8 block must be in 1..{MAX_INT8_BLOCK}, got {self.block}")

    @property
    def tag(self) -> str:
        """The form written in the wire header."""
        return "fp16" if self.method == "fp16" else f"int8:{self.block}"


def parse_compression(spec: str | Compression | None) -> Compression | None:
    """Parse ``None``, ``"fp16"``, ``"int8"`` or ``"int8:<block>"``; ValueError otherwise."""
    if spec is None or isinstance(spec, Compression):
        return spec
    if spec == "fp16":
        return Compression("fp16")
    if spec == "int8":
        return Compression("int8")
    if spec.startswith("int8:"):
        try:
            block = int(spec[5:])
        except ValueError:
            raise ValueError(f"bad int8 block in {spec!r}; use e.g. 'int8:64'") from None
        return Compression("int8", block)
    raise ValueError(f"unknown compression {spec!r}; use 'fp16', 'int8' or 'int8:<block>'")


def compressible(dtype: np.dtype[np.generic]) -> bool:
    return dtype.name in _COMPRESSIBLE


_WIRE_TAG = re.compile(r"fp16|int8:[1-9][0-9]{0,6}")
"""The only tags a header may carry: what `Compression.tag` writes, nothing looser
(no bare ``int8``, signs, spaces, underscores or non-ASCII digits that `int` accepts)."""


@functools.lru_cache(maxsize=64)
def _parse_wire_tag(tag: str) -> Compression:
    if _WIRE_TAG.fullmatch(tag) is None:
        raise ProtocolError(
            f"bad compression tag {tag[:32]!r}; the wire carries 'fp16' or 'int8:<block>'"
        )
    try:
        method = parse_compression(tag)
    except ValueError as error:  # a block above MAX_INT8_BLOCK
        raise ProtocolError(f"bad compression tag {tag!r}: {error}") from None
    assert method is not None  # a str never parses to None
    return method


def parse_compression_tag(tag: object) -> Compression:
    """Parse a header's compression tag; anything but a well-formed one is a
    ProtocolError. Cached: a stream repeats the same few tags on every tensor."""
    if type(tag) is not str:
        raise ProtocolError(f"compression tag must be a str, got {type(tag).__name__}")
    return _parse_wire_tag(tag)


def compressed_nbytes(tag: str, count: int) -> int:
    """Bytes of the payload a tensor of `count` values has under `tag`."""
    return _payload_nbytes(parse_compression_tag(tag), count)


def _payload_nbytes(method: Compression, count: int) -> int:
    if method.method == "fp16":
        return 2 * count
    return 4 * -(-count // method.block) + count


def compress(array: np.ndarray, method: Compression) -> np.ndarray:
    """The payload (1-D uint8/float16 array) of a float tensor under `method`."""
    flat = np.asarray(array).reshape(-1)
    if method.method == "fp16":
        return flat.astype(np.float16)
    values = flat.astype(np.float32, copy=False)
    count = values.size
    blocks = math.ceil(count / method.block)
    padded = np.zeros(blocks * method.block, dtype=np.float32)
    padded[:count] = values
    grid = padded.reshape(blocks, method.block)
    scales = np.abs(grid).max(axis=1) / 127.0
    scales[scales == 0] = 1.0
    quantized = np.clip(np.rint(grid / scales[:, None]), -127, 127).astype(np.int8)
    payload = np.empty(4 * blocks + count, dtype=np.uint8)
    payload[: 4 * blocks] = scales.astype(np.float32).view(np.uint8)
    payload[4 * blocks :] = quantized.reshape(-1)[:count].view(np.uint8)
    return payload


def decompress(
    payload: memoryview | bytes,
    tag: object,
    dtype: np.dtype[np.generic],
    shape: object,
    what: str = "compressed tensor",
) -> np.ndarray:
    """Rebuild a tensor of `dtype` and `shape` from its compressed payload, checking
    each of them first: ProtocolError (never another error) if they do not fit.

    Memory is O(values): the int8 path never pads to a whole block, so a one-value
    tensor under a 2**20 block costs no more than under a 64 one."""
    if not compressible(dtype):
        raise ProtocolError(f"{what}: {dtype.name} cannot be compressed")
    method = parse_compression_tag(tag)
    dims, count = checked_shape(shape, what)
    data = np.frombuffer(payload, dtype=np.uint8)
    expected = _payload_nbytes(method, count)
    if data.nbytes != expected:
        raise ProtocolError(
            f"{what}: {method.tag} payload of {list(dims)} must be {expected} bytes, "
            f"got {data.nbytes}"
        )
    if method.method == "fp16":
        return data.view(np.float16).astype(dtype).reshape(dims)
    block = method.block
    full, rest = divmod(count, block)
    blocks = full + (1 if rest else 0)
    scales = data[: 4 * blocks].view(np.float32)
    quantized = data[4 * blocks :].view(np.int8)
    values = np.empty(count, dtype=np.float32)
    head = full * block
    with np.errstate(all="ignore"):  # a peer's scales may be inf/NaN: garbage in, no warning
        np.multiply(quantized[:head].reshape(full, block), scales[:full, None],
                    out=values[:head].reshape(full, block))
        if rest:
            np.multiply(quantized[head:], scales[full], out=values[head:])
        result = values.astype(dtype, copy=False)
    return result.reshape(dims)
