"""Run one collective group's members as threads of this process, each on its own body.

Why one helper: every collective test builds its group differently (ZeroMQ or TCP links,
CURVE, sealed, emulated, a sync format) but runs the members the same way: each builds
its member, runs the test's body, hands back the result or the exception for the test
to assert on, and closes its member whatever happened.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

G = TypeVar("G")


def run_members(n: int, make: Callable[[int], G], body: Callable[[G], Any], *,
                close: Callable[[G], None], join_s: float = 120.0) -> list[Any]:
    """`body(member)` on `n` members built by `make(rank)`, one thread each; each
    member's result, or the exception it raised, in rank order."""
    results: list[Any] = [None] * n

    def member(rank: int) -> None:
        group = make(rank)
        try:
            results[rank] = body(group)
        except Exception as error:  # handed back to the test to assert on
            results[rank] = error
        finally:
            close(group)

    threads = [threading.Thread(target=member, args=(rank,)) for rank in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=join_s)
    return results
