"""`Record`: the base of every wire record, with the one generic `to_meta` / `from_meta`.

Why generic: a record declares each field once, with its type and its check
(`fields.wire`), and the same declaration drives encoding and validation, so the
two can never disagree. `from_meta` refuses a non-map, unknown keys and missing
required keys, checks every field, then runs the record's cross-field rules
(`_checked`); it raises `ProtocolError` naming the field and nothing else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, Self

import numpy as np

from edge_runtime.protocol.fields import Check, fail
from transports.wire import Frame

MAX_KEYS_SHOWN = 8
MAX_CACHED_PATHS = 256
"""Places per record type whose field paths are kept (`Record._paths_at`): a record is
parsed at a handful of places (its kind, `parent.field[i]` for i < MAX_STAGES…), so
this bound is never reached by real traffic and only caps what a hostile one could grow."""

_PLAIN = frozenset({str, int, float, bool, bytes, type(None)})
"""Types `_encode` passes through as they are: most fields of most records, tested
first because every request's records are encoded on the hot path."""


def _encode(value: Any) -> Any:
    if type(value) in _PLAIN:
        return value
    if isinstance(value, Record):
        return value.to_meta()
    if isinstance(value, tuple | list):
        return [_encode(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _encode(v) for k, v in value.items()}
    to_dict = getattr(value, "to_dict", None)  # devices' records (DeviceProfile)
    if callable(to_dict):
        return to_dict()
    return value


class Record:
    """A frozen dataclass that travels as a msgpack map (a frame's meta, or nested).

    `KIND` is the frame kind of a message record ("" for nested records; "reply" for
    replies, which are decoded by the request that awaits them).
    """

    KIND: ClassVar[str] = ""
    _checks: ClassVar[dict[str, tuple[Check, bool]]]
    _names: ClassVar[tuple[str, ...]]
    _paths: ClassVar[dict[str, tuple[tuple[str, str, Check, bool], ...]]]

    def to_meta(self) -> dict[str, Any]:
        names = type(self).__dict__.get("_names")
        if names is None:  # once per class: `dataclasses.fields` is slow per call
            assert dataclasses.is_dataclass(self)
            names = type(self)._names = tuple(f.name for f in dataclasses.fields(self))
        return {name: _encode(getattr(self, name)) for name in names}

    @classmethod
    def from_meta(cls, meta: object) -> Self:
        """The record `meta` encodes, every field checked; ProtocolError otherwise."""
        return cls.parse(meta, cls.KIND or cls.__name__)

    @classmethod
    def parse(cls, meta: object, where: str) -> Self:
        """`from_meta` for a record nested at `where` (errors name the full path)."""
        checks = cls._field_checks()
        if type(meta) is not dict:
            fail(where, f"must be a map, got {type(meta).__name__}")
        if not checks.keys() >= meta.keys():
            unknown = [k for k in meta if k not in checks]
            shown = ", ".join(repr(k)[:40] for k in unknown[:MAX_KEYS_SHOWN])
            fail(where, f"has unknown field(s) {shown}")
        values: dict[str, Any] = {}
        for name, path, check, required in cls._paths_at(where):
            if name in meta:
                values[name] = check(meta[name], path)
            elif required:
                fail(path, "is missing")
        return cls(**values)._checked(where)

    @classmethod
    def _paths_at(cls, where: str) -> tuple[tuple[str, str, Check, bool], ...]:
        """(name, "where.name", check, required) of every field, built once per place a
        record is parsed at (a few per record type: its kind, or its slot in a parent),
        not once per field per message."""
        paths = cls.__dict__.get("_paths")
        if paths is None:
            paths = cls._paths = {}
        found = paths.get(where)
        if found is None:
            found = tuple((name, f"{where}.{name}", check, required)
                          for name, (check, required) in cls._field_checks().items())
            if len(paths) < MAX_CACHED_PATHS:
                paths[where] = found
        return found

    def _checked(self, where: str) -> Self:
        """Cross-field rules of a decoded record (override); raise via `fields.fail`."""
        return self

    @classmethod
    def _field_checks(cls) -> dict[str, tuple[Check, bool]]:
        cached = cls.__dict__.get("_checks")
        if cached is None:
            cached = {}
            for f in dataclasses.fields(cls):  # type: ignore[arg-type]
                required = (f.default is dataclasses.MISSING
                            and f.default_factory is dataclasses.MISSING)
                cached[f.name] = (f.metadata["check"], required)
            cls._checks = cached
        return cached

    def frame(self, request_id: int = 0, sender: str = "",
              tensors: Mapping[str, np.ndarray] | None = None) -> Frame:
        """This message as a frame (its meta is exactly `to_meta()`)."""
        if not self.KIND:
            raise TypeError(f"{type(self).__name__} is not a message of its own")
        return Frame(kind=self.KIND, request_id=request_id, sender=sender,
                     meta=self.to_meta(), tensors=dict(tensors or {}))


Message = Record
"""A record that travels as a whole frame's meta (it has a `KIND`)."""
