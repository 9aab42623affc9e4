"""Clock offsets between the coordinator and each agent, estimated NTP-style.

Why: each device stamps its spans with its own wall clock, and two devices' clocks may
differ by far more than a span lasts. Every round trip whose reply carries the agent's
clock (the hello at connect time, each trace fetch) is one sample: the agent read its
clock somewhere between the coordinator's send (t0) and receipt (t1), so its offset is
`agent_clock - (t0 + t1) / 2`, uncertain by at most half the round trip. The sample
with the shortest round trip is kept (as NTP's clock filter does).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class ClockSample:
    """One round trip: the agent's clock, read between the coordinator's t0 and t1."""

    offset_s: float  # agent clock minus coordinator clock
    rtt_s: float  # the round trip; the offset is uncertain by at most half of it

    @classmethod
    def of(cls, sent: float, agent_clock: float, received: float) -> ClockSample:
        rtt = max(0.0, received - sent)
        return cls(agent_clock - (sent + received) / 2.0, rtt)

    @property
    def error_s(self) -> float:
        return self.rtt_s / 2.0


class ClockOffsets:
    """The best offset sample per agent (thread-safe: samples come from several calls)."""

    def __init__(self) -> None:
        self._best: dict[str, ClockSample] = {}
        self._lock = threading.Lock()

    def add(self, agent: str, sample: ClockSample) -> ClockSample:
        """Keep `sample` if its round trip is the shortest yet; returns the one kept."""
        with self._lock:
            best = self._best.get(agent)
            if best is None or sample.rtt_s < best.rtt_s:
                self._best[agent] = best = sample
            return best

    def observe(self, agent: str, sent: float, agent_clock: float | None,
                received: float) -> None:
        """Add a round trip's sample (a reply without a clock adds nothing)."""
        if agent_clock is not None:
            self.add(agent, ClockSample.of(sent, agent_clock, received))

    def get(self, agent: str) -> ClockSample | None:
        with self._lock:
            return self._best.get(agent)

    def offset(self, agent: str) -> float:
        """Seconds to subtract from `agent`'s clock to get the coordinator's (0 unknown)."""
        best = self.get(agent)
        return 0.0 if best is None else best.offset_s

    def snapshot(self) -> dict[str, ClockSample]:
        with self._lock:
            return dict(self._best)


__all__ = ["ClockOffsets", "ClockSample"]
