"""Field checks of the wire records: a decoded msgpack value in, the typed value out.

Why small composable checks: every field of every message is validated by type and
range before anything acts on it (a peer may be buggy, old or hostile), and a record's
declaration should say its rules in one line per field. Each check takes the value and
where it sits (``"activation.client"``) and returns the typed value (lists become
tuples) or raises `ProtocolError` naming that place; nothing else may escape.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, NoReturn

from transports.errors import ProtocolError

Check = Callable[[Any, str], Any]

MAX_NAME = 256
"""Longest name, id, address, key or kind (characters)."""
MAX_TEXT = 64 * 1024
"""Longest free text (error messages, a plan's JSON is checked separately)."""
MAX_ITEMS = 4096
"""Most items in a list unless a record says otherwise."""
MAX_INT = 2**63 - 1
MAX_PLAIN_DEPTH = 8
"""Deepest nesting of a free-form status map."""
MAX_PLAIN_ITEMS = 100_000
"""Most scalars in one free-form status map."""

_SCALARS = (str, int, float, bool, bytes, type(None))


def fail(where: str, what: str) -> NoReturn:
    raise ProtocolError(f"{where} {what}")


def wire(check: Check) -> dict[str, Check]:
    """Dataclass field metadata naming the field's check: `field(metadata=wire(text()))`."""
    return {"check": check}


def text(max_len: int = MAX_NAME, *, min_len: int = 0,
         pattern: re.Pattern[str] | None = None) -> Check:
    def check(value: Any, where: str) -> str:
        if type(value) is not str:
            fail(where, f"must be a str, got {type(value).__name__}")
        if not min_len <= len(value) <= max_len:
            fail(where, f"must have {min_len}..{max_len} characters, got {len(value)}")
        if pattern is not None and pattern.fullmatch(value) is None:
            fail(where, f"must match {pattern.pattern}")
        return value
    return check


def integer(lo: int = 0, hi: int = MAX_INT) -> Check:
    def check(value: Any, where: str) -> int:
        if type(value) is not int:
            fail(where, f"must be an int, got {type(value).__name__}")
        if not lo <= value <= hi:
            fail(where, f"must be in [{lo}, {hi}]")
        return value
    return check


def number(lo: float = 0.0, hi: float = math.inf, *, above: bool = False) -> Check:
    """A finite float in [lo, hi] (or (lo, hi] with `above`); ints are accepted."""
    def check(value: Any, where: str) -> float:
        if type(value) not in (int, float):
            fail(where, f"must be a number, got {type(value).__name__}")
        try:
            result = float(value)
        except OverflowError:
            fail(where, "is too large")
        if not math.isfinite(result):
            fail(where, "must be finite")
        if result < lo or result > hi or (above and result == lo):
            fail(where, f"must be in {'(' if above else '['}{lo:g}, {hi:g}]")
        return result
    return check


def flag() -> Check:
    def check(value: Any, where: str) -> bool:
        if type(value) is not bool:
            fail(where, f"must be a bool, got {type(value).__name__}")
        return value
    return check


def blob(max_len: int) -> Check:
    def check(value: Any, where: str) -> bytes:
        if type(value) is not bytes:
            fail(where, f"must be bytes, got {type(value).__name__}")
        if len(value) > max_len:
            fail(where, f"must be at most {max_len} bytes")
        return value
    return check


def choice(*allowed: Any) -> Check:
    def check(value: Any, where: str) -> Any:
        if type(value) not in (str, type(None)) or value not in allowed:
            fail(where, f"must be one of {list(allowed)}")
        return value
    return check


def optional(inner: Check) -> Check:
    def check(value: Any, where: str) -> Any:
        return None if value is None else inner(value, where)
    return check


def seq(item: Check, max_len: int = MAX_ITEMS) -> Check:
    """A list (or tuple) of at most `max_len` items, each checked; returns a tuple."""
    def check(value: Any, where: str) -> tuple[Any, ...]:
        if type(value) not in (list, tuple):
            fail(where, f"must be a list, got {type(value).__name__}")
        if len(value) > max_len:
            fail(where, f"must have at most {max_len} items")
        return tuple(item(v, f"{where}[{i}]") for i, v in enumerate(value))
    return check


def fixed(*items: Check) -> Check:
    """A list of exactly len(items) values, each with its own check; returns a tuple."""
    def check(value: Any, where: str) -> tuple[Any, ...]:
        if type(value) not in (list, tuple) or len(value) != len(items):
            fail(where, f"must be a list of {len(items)} items")
        return tuple(c(v, f"{where}[{i}]") for i, (c, v) in enumerate(zip(items, value,
                                                                            strict=True)))
    return check


def one_of(*checks: Check) -> Check:
    """The first check that accepts the value (e.g. an int or a str dimension)."""
    def check(value: Any, where: str) -> Any:
        for candidate in checks:
            try:
                return candidate(value, where)
            except ProtocolError:
                continue
        fail(where, f"has an unexpected {type(value).__name__} value")
    return check


def plain(max_depth: int = MAX_PLAIN_DEPTH) -> Check:
    """A free-form map of plain data (a deployment's status, meant for people):
    str keys, bounded depth and size; returned as a copy."""
    def walk(value: Any, where: str, depth: int, budget: list[int]) -> Any:
        budget[0] -= 1
        if budget[0] < 0:
            fail(where, f"holds more than {MAX_PLAIN_ITEMS} values")
        if type(value) in _SCALARS:
            return value
        if depth >= max_depth:
            fail(where, f"is nested deeper than {max_depth} levels")
        if type(value) in (list, tuple):
            return [walk(v, where, depth + 1, budget) for v in value]
        if type(value) is dict:
            out = {}
            for key, item in value.items():
                if type(key) is not str:
                    fail(where, "keys must be str")
                out[key] = walk(item, f"{where}.{key[:32]}", depth + 1, budget)
            return out
        fail(where, f"holds a {type(value).__name__}, which is not plain data")

    def check(value: Any, where: str) -> dict[str, Any]:
        if type(value) is not dict:
            fail(where, f"must be a map, got {type(value).__name__}")
        result: dict[str, Any] = walk(value, where, 0, [MAX_PLAIN_ITEMS])
        return result
    return check


def converted(parse: Callable[[Any], Any], what: str) -> Check:
    """A value another package's own parser validates (`DeviceProfile.from_dict`);
    whatever that parser raises becomes a ProtocolError naming the field."""
    def check(value: Any, where: str) -> Any:
        try:
            return parse(value)
        except Exception as error:  # a foreign parser: anything it raises is a bad field
            fail(where, f"is not a valid {what} ({type(error).__name__}: {str(error)[:200]})")
    return check


SESSION_PATTERN = re.compile(r"[0-9a-f-]{8,64}")
session_id = text(64, min_len=8, pattern=SESSION_PATTERN)
"""A coordinator session id: 8-64 characters of [0-9a-f-]."""
ident = text(MAX_NAME, min_len=1)
"""A deployment id, agent name, file name or address: non-empty, bounded."""
sha256_hex = text(64, min_len=64, pattern=re.compile(r"[0-9a-f]{64}"))
public_key = text(40, pattern=re.compile(r"(?:[0-9a-zA-Z.:+=^!/*?&<>()\[\]{}@%$#-]{40})?"))
"""A CURVE public key in Z85 text (40 characters of the Z85 alphabet) or an empty string:
a malformed key must be refused on receipt, not when a socket is configured with it."""
