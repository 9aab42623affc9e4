"""The journal's payloads as bytes: results, generation requests, generations, arrays.

Why a module of its own: the journal (`journal.py`) stores opaque bytes and knows
nothing of what a request or a result is; the coordinator that writes an entry and
the `resume()` that reads it back months of releases later must agree on one
encoding. Records travel as msgpack maps built from their dataclass fields (so a
field added to `Result` or `Generation` is journaled without touching this file,
and a field missing from an older entry takes its default); arrays travel as
`.npy` members of a zip (the `.npz` layout), written and read with
`allow_pickle=False`. Nothing here ever unpickles. Bytes that do not decode raise
`JournalError`, never a msgpack, zip or numpy exception.
"""

from __future__ import annotations

import dataclasses
import io
import types
import typing
import zipfile
from collections.abc import Callable, Hashable, Iterator, Mapping
from functools import cache
from typing import Any, TypeVar

import msgpack
import numpy as np

from edge_runtime.errors import JournalError
from edge_runtime.llm.engine import Generation
from edge_runtime.sdk.fallback.targets import GenerationRequest
from edge_runtime.sdk.result import Result

_NPY = ".npy"
_MAX_SHOWN = 60
"""Characters of a bad value quoted in an error."""

T = TypeVar("T")


# --- arrays -------------------------------------------------------------------------

def encode_arrays(arrays: Mapping[str, np.ndarray]) -> bytes:
    """`arrays` as the bytes of an uncompressed `.npz` (dtypes, shapes, order kept bit for
    bit). Written member by member rather than with `np.savez`, whose own keyword
    arguments (`file`, `allow_pickle`) would clash with inputs of those names."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, value in arrays.items():
            if not isinstance(name, str):
                raise JournalError(f"array names must be strings, got {name!r:.{_MAX_SHOWN}}")
            array = np.asarray(value)
            if array.dtype.hasobject:
                raise JournalError(
                    f"array {name!r} has dtype {array.dtype}, which cannot be journaled without "
                    "pickle: pass numeric, boolean or fixed-width string arrays")
            with archive.open(name + _NPY, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)
    return buffer.getvalue()


def decode_arrays(data: bytes, where: str = "arrays") -> dict[str, np.ndarray]:
    """The arrays `encode_arrays` wrote; JournalError naming `where` if they do not decode."""
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise JournalError(f"{where}: not an .npz archive of named arrays")
        with loaded as npz:
            return {name: npz[name] for name in npz.files}
    except JournalError:
        raise
    except Exception as error:  # damaged bytes fail in zipfile, zlib, struct or numpy's parser
        raise JournalError(f"{where}: the stored arrays are corrupt ({error})") from error


class LazyArrays(Mapping[str, np.ndarray]):
    """Named arrays decoded on first access, so listing unfinished entries does not read
    (or hold in memory) every side file; a missing or corrupt file raises JournalError
    naming it when the arrays are first used."""

    def __init__(self, load: Callable[[], dict[str, np.ndarray]]) -> None:
        self._load: Callable[[], dict[str, np.ndarray]] | None = load
        self._arrays: dict[str, np.ndarray] = {}

    def _get(self) -> dict[str, np.ndarray]:
        if self._load is not None:
            self._arrays = self._load()
            self._load = None
        return self._arrays

    def __getitem__(self, name: str) -> np.ndarray:
        return self._get()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())

    def __repr__(self) -> str:
        return "LazyArrays(<not loaded>)" if self._load else f"LazyArrays({list(self._arrays)})"


# --- records ------------------------------------------------------------------------

def encode_result(result: Result) -> tuple[bytes, dict[str, np.ndarray]]:
    """`result` as msgpack meta (every field but the outputs, and the trace: a diagnosis of
    that attempt, not part of the answer) and its output arrays."""
    fields = _to_fields(result, skip=("outputs", "trace"))
    fields["outputs"] = list(result.outputs)
    return _pack("Result", fields), dict(result.outputs)


def decode_result(meta: bytes, arrays: Mapping[str, np.ndarray]) -> Result:
    """The `Result` `encode_result` made; its outputs are `arrays`, in the recorded order."""
    fields = _unpack("Result", meta)
    names = fields.pop("outputs", None)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise JournalError("Result: the stored meta does not list its outputs by name")
    if set(names) != set(arrays):
        raise JournalError(
            f"Result: the stored outputs {sorted(names)} do not match the stored arrays "
            f"{sorted(arrays)}")
    return _from_fields(Result, fields, "Result", outputs={n: arrays[n] for n in names})


def encode_generation_request(request: GenerationRequest) -> bytes:
    return _pack("GenerationRequest", _to_fields(request))


def decode_generation_request(data: bytes) -> GenerationRequest:
    return _from_fields(GenerationRequest, _unpack("GenerationRequest", data),
                        "GenerationRequest")


def encode_generation(generation: Generation) -> bytes:
    return _pack("Generation", _to_fields(generation))


def decode_generation(data: bytes) -> Generation:
    return _from_fields(Generation, _unpack("Generation", data), "Generation")


# --- the generic part: dataclass fields <-> msgpack maps ------------------------------

def _pack(record: str, fields: dict[str, Any]) -> bytes:
    return msgpack.packb({"record": record, "fields": fields}, use_bin_type=True)


def _unpack(record: str, data: bytes) -> dict[str, Any]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise JournalError(f"{record}: expected bytes, got {type(data).__name__}")
    try:
        payload = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as error:
        raise JournalError(f"{record}: the stored bytes are not msgpack ({error})") from error
    if not isinstance(payload, dict) or not isinstance(payload.get("fields"), dict):
        raise JournalError(f"{record}: the stored bytes are not a journaled record")
    if payload.get("record") != record:
        raise JournalError(
            f"{record}: the stored bytes hold a {str(payload.get('record'))[:_MAX_SHOWN]!r}, "
            f"not a {record}")
    fields: dict[str, Any] = payload["fields"]
    return fields


def _to_fields(record: object, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    assert dataclasses.is_dataclass(record) and not isinstance(record, type)
    return {f.name: _plain(getattr(record, f.name), f"{type(record).__name__}.{f.name}")
            for f in dataclasses.fields(record) if f.name not in skip}


def _plain(value: Any, where: str) -> Any:
    """`value` as msgpack-able plain data: dataclasses as maps, tuples as lists."""
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return value
    if isinstance(value, np.generic) and not isinstance(value, np.object_):
        return value.item()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _to_fields(value)
    if isinstance(value, tuple | list):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    raise JournalError(f"{where}: cannot journal a {type(value).__name__} (no pickle)")


def _from_fields(cls: type[T], fields: dict[str, Any], where: str, **given: Any) -> T:
    """`cls(**fields)` with every field checked against its annotation; a field the
    stored map lacks takes its default (an entry written before the field existed);
    a stored field `cls` no longer has is dropped."""
    values: dict[str, Any] = dict(given)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in given:
            continue
        if f.name in fields:
            hint = _hints(typing.cast(Hashable, cls))[f.name]
            values[f.name] = _coerce(fields[f.name], hint, f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise JournalError(f"{where}.{f.name} is missing from the stored record")
    return cls(**values)


@cache
def _hints(cls: Any) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """`value` (as msgpack decoded it) as an instance of `hint`; JournalError otherwise."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin is typing.Union or origin is types.UnionType:
        for arm in args:
            try:
                return _coerce(value, arm, where)
            except JournalError:
                continue
        _bad(value, hint, where)
    if hint is type(None):
        return value if value is None else _bad(value, hint, where)
    if hint is bool:
        return value if isinstance(value, bool) else _bad(value, hint, where)
    if hint is int:
        return value if type(value) is int else _bad(value, hint, where)
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return float(value) if ok else _bad(value, hint, where)
    if hint is str or hint is bytes:
        return value if isinstance(value, hint) else _bad(value, hint, where)
    if origin is typing.Literal:
        return value if value in args else _bad(value, hint, where)
    if origin is tuple or origin is list:
        if not isinstance(value, list):
            _bad(value, hint, where)
        if origin is list or (len(args) == 2 and args[1] is Ellipsis):
            items = [_coerce(v, args[0] if args else Any, f"{where}[{i}]")
                     for i, v in enumerate(value)]
        elif len(args) == len(value):
            pairs = enumerate(zip(value, args, strict=True))
            items = [_coerce(v, a, f"{where}[{i}]") for i, (v, a) in pairs]
        else:
            _bad(value, hint, where)
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            _bad(value, hint, where)
        key_hint, value_hint = args or (Any, Any)
        return {_coerce(k, key_hint, f"{where} key"): _coerce(v, value_hint, f"{where}[{k!r}]")
                for k, v in value.items()}
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            _bad(value, hint, where)
        return _from_fields(hint, value, where)
    raise JournalError(f"{where}: the journal cannot decode a field of type {hint!r}")


def _bad(value: Any, hint: Any, where: str) -> typing.NoReturn:
    shown = repr(value)[:_MAX_SHOWN]
    raise JournalError(f"{where}: the stored value {shown} is not a {hint!r}")


__all__ = [
    "LazyArrays",
    "decode_arrays",
    "decode_generation",
    "decode_generation_request",
    "decode_result",
    "encode_arrays",
    "encode_generation",
    "encode_generation_request",
    "encode_result",
]
