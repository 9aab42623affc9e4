"""Progress of long work an agent does on its own (an llm-shard's conversion and
quantization), as a typed record inside a deployment's status map.

Why in the status map: the coordinator waits for `llm_ready`, which the agent answers
only when the work is over; `status` is answered by the control loop at any time, so
polling it shows the work moving. The map lists every task of the current load, the
finished ones at their totals, so a poll that came late still sees each task end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edge_runtime.protocol.fields import fail, integer, number, text, wire
from edge_runtime.protocol.record import Record

PROGRESS_KEY = "progress"
"""The status map's key holding a list of `TaskProgress` maps (llm-shard)."""

MAX_TASKS = 16
"""At most this many tasks are listed per load."""


@dataclass(frozen=True)
class TaskProgress(Record):
    """One task of an agent's load: `done` of `total` `unit`s (total 0: not known yet),
    `elapsed_s` seconds after it started (by the agent's clock: a duration, so no clock
    offset matters; the coordinator's rate and time left come from it)."""

    task: str = field(metadata=wire(text(128, min_len=1)))
    done: int = field(metadata=wire(integer(0)))
    total: int = field(metadata=wire(integer(0)))
    unit: str = field(default="B", metadata=wire(text(32, min_len=1)))
    elapsed_s: float = field(default=0.0, metadata=wire(number()))

    @property
    def finished(self) -> bool:
        return self.total > 0 and self.done >= self.total


def parse_progress(status: Any, where: str = "status") -> tuple[TaskProgress, ...]:
    """The tasks a deployment's status map lists (none when it lists none); a malformed
    list is a `ProtocolError` naming `where`."""
    if not isinstance(status, dict) or status.get(PROGRESS_KEY) is None:
        return ()
    items = status[PROGRESS_KEY]
    at = f"{where}.{PROGRESS_KEY}"
    if not isinstance(items, list) or len(items) > MAX_TASKS:
        fail(at, f"must be a list of at most {MAX_TASKS} task maps")
    return tuple(TaskProgress.parse(item, f"{at}[{i}]") for i, item in enumerate(items))


__all__ = ["MAX_TASKS", "PROGRESS_KEY", "TaskProgress", "parse_progress"]
