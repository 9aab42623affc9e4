"""Each hub's clock offsets to its agents (`trace.ClockOffsets`), sampled at connect time.

Why keyed by hub: every request of one coordinator goes through its hub, so the hello
(`membership.hello`) and the trace fetch (`tracing.py`) can each add a round trip's
sample without threading a new object through the SDK's constructors.
"""

from __future__ import annotations

import weakref

from edge_runtime.trace.clock import ClockOffsets

_offsets: weakref.WeakKeyDictionary[object, ClockOffsets] = weakref.WeakKeyDictionary()


def clock_offsets(hub: object) -> ClockOffsets:
    """The offsets of `hub`'s agents (made on first use, gone with the hub)."""
    found = _offsets.get(hub)
    if found is None:
        found = _offsets[hub] = ClockOffsets()
    return found


__all__ = ["clock_offsets"]
