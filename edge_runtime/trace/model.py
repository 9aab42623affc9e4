"""`Trace`: the spans of one or more requests on every device, on one clock.

Why a separate, plain record: the SDK collects `TraceSpan`s from each agent in that
agent's clock; a `Trace` holds them moved onto the coordinator's clock (by the offsets
`clock.py` estimated) and named by device and lane, which is what the Chrome export,
the PNG timeline and tests need, and what a saved file round-trips to.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from edge_runtime.protocol.trace import LANES, TraceSpan
from edge_runtime.trace.clock import ClockSample

COORDINATOR = "coordinator"
"""The device name of the coordinator's own spans (the app's process)."""


@dataclass(frozen=True)
class Span:
    """One activity of one device, in the coordinator's clock (seconds since the epoch)."""

    device: str
    lane: str
    name: str
    start: float
    end: float
    request_id: int = 0
    peer: str = ""  # receive spans: who sent the frame ("coordinator" for the app)
    nbytes: int = 0

    @property
    def duration_s(self) -> float:
        return self.end - self.start

    def contains(self, other: Span, slack_s: float = 0.0) -> bool:
        """True when `other` lies inside this span (within `slack_s` at either end)."""
        return self.start - slack_s <= other.start and other.end <= self.end + slack_s


@dataclass(frozen=True)
class Trace:
    """Spans of traced requests across devices, aligned; `offsets` says how (per agent
    its clock's offset from the coordinator's and that estimate's error bound)."""

    spans: tuple[Span, ...]
    devices: tuple[str, ...]
    offsets: Mapping[str, ClockSample] = field(default_factory=dict)
    meta: Mapping[str, str] = field(default_factory=dict)  # title, command, machine, date
    dropped: int = 0  # spans agents' rings overwrote before they were fetched

    @property
    def start(self) -> float:
        return min((s.start for s in self.spans), default=0.0)

    @property
    def end(self) -> float:
        return max((s.end for s in self.spans), default=0.0)

    def lanes(self) -> list[tuple[str, str]]:
        """(device, lane) pairs that hold spans, devices in order, lanes in LANES order."""
        used = {(s.device, s.lane) for s in self.spans}
        order = {lane: i for i, lane in enumerate(LANES)}
        return sorted(used, key=lambda p: (self._device_rank(p[0]), order.get(p[1], 99), p[1]))

    def _device_rank(self, device: str) -> int:
        return self.devices.index(device) if device in self.devices else len(self.devices)

    def on(self, device: str, lane: str | None = None) -> list[Span]:
        return [s for s in self.spans if s.device == device and (lane is None or s.lane == lane)]

    def busy_s(self, device: str, lane: str) -> float:
        return sum(s.duration_s for s in self.on(device, lane))

    def merged(self, other: Trace) -> Trace:
        devices = tuple(dict.fromkeys((*self.devices, *other.devices)))
        return Trace((*self.spans, *other.spans), devices, {**self.offsets, **other.offsets},
                     {**self.meta, **other.meta}, self.dropped + other.dropped)

    def with_meta(self, **meta: str) -> Trace:
        return Trace(self.spans, self.devices, self.offsets, {**self.meta, **meta},
                     self.dropped)


def align(records: Mapping[str, Iterable[TraceSpan]], offsets: Mapping[str, ClockSample],
          order: Iterable[str] = ()) -> Trace:
    """Spans recorded by each device (in its own clock) moved onto the coordinator's.

    `records` maps a device name (COORDINATOR for the app's own spans) to its spans. A
    `receive` span starts at the sender's stamp, in the sender's clock."""
    def shift(device: str) -> float:
        sample = offsets.get(device)
        return 0.0 if sample is None else sample.offset_s

    spans: list[Span] = []
    for device, recorded in records.items():
        own = shift(device)
        for r in recorded:
            start = r.start - own
            sender = r.peer or COORDINATOR
            if r.lane == "receive" and r.sent_at is not None:
                start = min(r.sent_at - shift(sender), r.end - own)
            spans.append(Span(device, r.lane, r.name, start, r.end - own, r.request_id,
                              sender if r.lane == "receive" else r.peer, r.nbytes))
    spans.sort(key=lambda s: (s.start, s.end))
    devices = tuple(dict.fromkeys((*order, *(s.device for s in spans))))
    return Trace(tuple(spans), devices, dict(offsets))


__all__ = ["COORDINATOR", "Span", "Trace", "align"]
