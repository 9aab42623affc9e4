"""Progress of long work (sending checkpoints and shards, converting, quantizing) as
typed records: bytes done, rate and time left, for the SDK's `progress` callbacks.

Why a meter and not bare counts: every caller wanted the same arithmetic (a rate over
the last seconds, not since the start, so a stall shows; the time left from that rate)
and the same throttling (a 5 GB transfer in 1 MiB chunks must not call back 5,000
times a second). `ProgressMeter` does both and always reports the end.

Callbacks take one `ProgressEvent`. A callback written for the earlier form
`progress(agent, done, total)` still works: `as_callback` adapts it (and passes it
byte counts only, as it always had: no conversion steps).

`AgentTasks` turns what agents report about their own long work (an llm-shard's
conversion and quantization, polled from its status: `protocol.progress`) into the
same events, one meter per agent and task.
"""

from __future__ import annotations

import inspect
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from edge_runtime.protocol.progress import TaskProgress

RATE_WINDOW_S = 3.0
"""The rate is measured over this many recent seconds: a stall shows within them."""

MIN_INTERVAL_S = 0.1
"""Events are passed on at most this often (the first and the last always)."""


@dataclass(frozen=True)
class ProgressEvent:
    """Where one piece of long work stands."""

    task: str  # what is being done, e.g. "sending checkpoint files"
    agent: str  # the agent it is done for ("" when it is done here)
    done: int  # bytes (or `unit`s) done so far
    total: int  # of how many (0: unknown)
    elapsed_s: float
    rate: float  # per second, over the last `RATE_WINDOW_S`
    eta_s: float | None  # seconds left at that rate (None: unknown)
    unit: str = "B"

    @property
    def finished(self) -> bool:
        return self.total > 0 and self.done >= self.total

    @property
    def fraction(self) -> float | None:
        return None if self.total <= 0 else min(1.0, self.done / self.total)


ProgressCallback = Callable[[ProgressEvent], None]
LegacyProgress = Callable[[str, int, int], None]
AnyProgress = ProgressCallback | LegacyProgress


def _positional(fn: Callable[..., Any]) -> int:
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: assume the new form
        return 1
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters):
        return 1
    return sum(1 for p in parameters if p.kind in kinds and p.default is p.empty)


def as_callback(progress: AnyProgress | None) -> ProgressCallback | None:
    """`progress` as a callback of `ProgressEvent`s; one written as
    `progress(agent, done, total)` is adapted."""
    if progress is None:
        return None
    if _positional(progress) >= 3:
        legacy: Any = progress

        def adapted(event: ProgressEvent) -> None:
            if event.unit == "B":  # the earlier form was told bytes sent, nothing else
                legacy(event.agent, event.done, event.total)

        return adapted
    callback: ProgressCallback = progress  # type: ignore[assignment]
    return callback


class ProgressMeter:
    """Counts work done on one task and tells `callback` (throttled, end always told)."""

    def __init__(self, task: str, total: int, callback: ProgressCallback | None, *,
                 agent: str = "", unit: str = "B",
                 clock: Callable[[], float] = time.monotonic,
                 min_interval_s: float = MIN_INTERVAL_S) -> None:
        self.task = task
        self.agent = agent
        self.total = total
        self.unit = unit
        self.done = 0
        self._callback = callback
        self._clock = clock
        self._min_interval_s = min_interval_s
        self._started = clock()
        self._last_told: float | None = None
        self._samples: deque[tuple[float, int]] = deque([(self._started, 0)])

    def advance(self, amount: int) -> None:
        self.update(self.done + amount)

    def update(self, done: int) -> None:
        now = self._clock()
        self.done = done
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW_S:
            self._samples.popleft()
        end = self.total > 0 and done >= self.total
        if (self._last_told is None or end
                or now - self._last_told >= self._min_interval_s):
            self._tell(now)

    def event(self, now: float | None = None) -> ProgressEvent:
        now = self._clock() if now is None else now
        first_t, first_done = self._samples[0]
        span = now - first_t
        rate = (self.done - first_done) / span if span > 0 else 0.0
        left = self.total - self.done
        eta = (0.0 if self.total > 0 and left <= 0
               else left / rate if self.total > 0 and rate > 0 else None)
        return ProgressEvent(self.task, self.agent, self.done, self.total,
                             now - self._started, rate, eta, self.unit)

    def _tell(self, now: float) -> None:
        self._last_told = now
        if self._callback is not None:
            self._callback(self.event(now))


class AgentTasks:
    """Events for the tasks agents report (`TaskProgress` lists polled from their status):
    one `ProgressMeter` per (agent, task), told only when a task moved, so polling the
    same state twice tells nothing and a task first seen finished is told once, at its
    total. Each meter runs on the task's own elapsed time, as the agent reports it, so
    rates and times left hold even for a task first seen late or already done."""

    def __init__(self, callback: ProgressCallback | None) -> None:
        self._callback = callback
        self._meters: dict[tuple[str, str], ProgressMeter] = {}
        self._elapsed: dict[tuple[str, str], float] = {}

    def update(self, agent: str, tasks: Sequence[TaskProgress]) -> None:
        for task in tasks:
            key = (agent, task.task)
            meter = self._meters.get(key)
            if meter is None:
                self._elapsed[key] = 0.0  # the meter starts at the task's start

                def clock(key: tuple[str, str] = key) -> float:
                    return self._elapsed[key]

                meter = ProgressMeter(task.task, task.total, self._callback, agent=agent,
                                      unit=task.unit, clock=clock)
                self._meters[key] = meter
            elif meter.done == task.done and meter.total == task.total:
                continue
            self._elapsed[key] = max(self._elapsed[key], task.elapsed_s)
            meter.total = task.total
            meter.update(task.done)


__all__ = ["AgentTasks", "AnyProgress", "LegacyProgress", "ProgressCallback", "ProgressEvent",
           "ProgressMeter", "as_callback"]
