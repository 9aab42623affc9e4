"""`Health`: which agents the coordinator may plan on, and when to knock on a lost one.

A lost agent (dead, hung past its heartbeat timeout, unreachable) is not planned on
until it answers a hello again. It is knocked on after a backoff that doubles with
each loss, with jitter, so a device rebooting in a loop is not hammered and many
coordinators do not knock in step. An agent lost `flap_limit` times within
`flap_window_s` is banned for `ban_s`: re-planning a deployment onto it only to lose
it again costs more than the capacity it adds.

Pure bookkeeping over a clock and a random source (both injectable), so the policy is
tested without a process; `agents.py` does the knocking.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from edge_runtime.sdk.config import Timeouts


class AgentState(StrEnum):
    UP = "up"
    DOWN = "down"  # lost; knocked on once `retry_at` passes
    BANNED = "banned"  # flapping; not knocked on before `retry_at` (the ban's end)


@dataclass
class AgentRecord:
    """What the coordinator remembers of one agent's availability."""

    state: AgentState = AgentState.UP
    losses: list[float] = field(default_factory=list)  # when it went from up to lost
    knocks: int = 0  # knocks that failed since it was lost
    retry_at: float = 0.0
    why: str = ""

    def describe(self, now: float) -> str:
        if self.state is AgentState.UP:
            return "up"
        wait = max(0.0, self.retry_at - now)
        what = "banned (flapping)" if self.state is AgentState.BANNED else "lost"
        return f"{what}: {self.why}; tried again in {wait:.1f} s"


class Health:
    """Availability of the agents of one cluster, by name."""

    def __init__(self, timeouts: Timeouts, names: Iterable[str] = (),
                 clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self._timeouts = timeouts
        self._clock = clock
        self._rng = rng or random.Random()
        self._records: dict[str, AgentRecord] = {name: AgentRecord() for name in names}

    def record(self, name: str) -> AgentRecord:
        return self._records.setdefault(name, AgentRecord())

    def usable(self, name: str) -> bool:
        return self.record(name).state is AgentState.UP

    def lost(self, name: str, why: str) -> AgentRecord:
        """`name` failed: not planned on until it answers again after its backoff.

        Going from up to lost counts towards the flap limit; a knock that fails while it
        is already lost only doubles the backoff (one long outage is not flapping)."""
        t = self._timeouts
        now = self._clock()
        record = self.record(name)
        record.why = why
        if record.state is AgentState.UP:
            record.losses = [at for at in record.losses if now - at < t.flap_window_s] + [now]
            record.knocks = 0
        elif now < record.retry_at:
            return record  # one outage seen by several requests at once counts once
        else:
            record.knocks += 1
        doublings = len(record.losses) - 1 + record.knocks
        backoff = min(t.rejoin_backoff_max_s, t.rejoin_backoff_s * 2.0 ** doublings)
        backoff *= 0.5 + self._rng.random()
        if len(record.losses) >= t.flap_limit:
            record.state = AgentState.BANNED
            record.retry_at = now + max(t.ban_s, backoff)
        else:
            record.state = AgentState.DOWN
            record.retry_at = now + backoff
        return record

    def back(self, name: str) -> None:
        """`name` answered a hello again and was re-introduced: plan on it again."""
        record = self.record(name)
        record.state = AgentState.UP
        record.why = ""

    def due(self) -> list[str]:
        """Lost agents whose backoff (or ban) has run out: knock on them now."""
        now = self._clock()
        return [name for name, r in self._records.items()
                if r.state is not AgentState.UP and now >= r.retry_at]

    def down(self) -> list[str]:
        return [name for name, r in self._records.items() if r.state is not AgentState.UP]

    def banned(self) -> list[str]:
        return [name for name, r in self._records.items() if r.state is AgentState.BANNED]

    def summary(self) -> dict[str, str]:
        now = self._clock()
        return {name: r.describe(now) for name, r in self._records.items()}


__all__ = ["AgentRecord", "AgentState", "Health"]
