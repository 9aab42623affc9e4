"""The check every decoder fuzz test applies (`test_decode_fuzz.py`, `test_datawire_fuzz.py`)."""

from __future__ import annotations

import tracemalloc
import warnings
from collections.abc import Callable
from typing import Any

import pytest

from transports.errors import ProtocolError

SLACK_BYTES = 1 << 20
"""Allocation allowed beyond a multiple of the input: Python and numpy bookkeeping."""

GROWTH = 12
"""Most bytes decoding may allocate per byte received: int8 decompression turns one
byte into a float32 value, plus a float32 intermediate when the tensor is float16."""


def _only_protocol_error(call: Callable[[], Any], received: int) -> Any:
    """`call()`'s result, or None if it raised a ProtocolError of its own (not one the
    decoder's last line of defence made of another error: that is a missing check).
    Fails on any other exception, on an allocation out of proportion to the `received`
    bytes (numpy reports its buffers to tracemalloc), on a long error message (they are
    logged), and on numpy warnings (a value check missing)."""
    tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return call()
    except ProtocolError as error:
        assert error.__cause__ is None, f"an unexpected error became {error!r}"
        assert len(str(error)) < 1000, "error messages are logged: keep them short"
        return None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak <= GROWTH * received + SLACK_BYTES, f"{peak} bytes for {received} received"


@pytest.fixture(scope="session")
def only_protocol_error() -> Callable[[Callable[[], Any], int], Any]:
    """only_protocol_error(call, received_bytes) -> call's result or None (see above).
    Session-scoped: Hypothesis tests may use it."""
    return _only_protocol_error
