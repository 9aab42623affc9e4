"""User-space link emulation: delay, bandwidth, jitter, loss and disconnects per peer.

The kernel of the development machines has no ``netem`` qdisc, so slow and
flaky links (Wi-Fi between a phone and a Pi) are emulated here, on the sending
side, inside the process: every message to a peer gets a departure time

    due = max(now, link free) + bytes / bandwidth  (serialisation; the link is busy)
          + delay + U(0, jitter)                   (propagation)

where "link free" is shared by all of the sender's peers when `shared_uplink` is
on (the default: a device has one radio and sends one frame at a time, so
messages to several peers serialise; receive-side contention, e.g. a hub's
fan-in, is not emulated). The message is held in an `Outbox` until `due`.
Messages to one peer keep their order
(like TCP), whole messages are dropped with probability `loss`, and every
message sent inside a disconnect window is dropped. The owner of a socket
flushes its outbox whenever it sends or waits to receive, so no extra thread
touches a ZeroMQ socket (sockets are not thread-safe).
"""

from __future__ import annotations

import heapq
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LinkSpec:
    """One direction of a link. Times in seconds, bandwidth in bytes/s (None = unlimited).

    `disconnect_windows` are (start, end) offsets in seconds from the moment the
    emulator was created; messages sent inside one are lost.
    """

    delay_s: float = 0.0
    bandwidth_bytes_per_s: float | None = None
    jitter_s: float = 0.0
    loss: float = 0.0
    disconnect_windows: tuple[tuple[float, float], ...] = ()

    def __post_init__(self) -> None:
        if self.delay_s < 0 or self.jitter_s < 0:
            raise ValueError("delay_s and jitter_s must be ≥ 0")
        if self.bandwidth_bytes_per_s is not None and self.bandwidth_bytes_per_s <= 0:
            raise ValueError("bandwidth_bytes_per_s must be > 0 (or None for unlimited)")
        if not 0.0 <= self.loss <= 1.0:
            raise ValueError("loss must be a probability in [0, 1]")
        for start, end in self.disconnect_windows:
            if end < start:
                raise ValueError(f"disconnect window ({start}, {end}) ends before it starts")

    @classmethod
    def wifi(cls) -> LinkSpec:
        """Typical home Wi-Fi between two devices: 5 ms round trip, 50 Mbit/s, 0.5 ms jitter."""
        return cls(delay_s=0.0025, bandwidth_bytes_per_s=50e6 / 8, jitter_s=0.0005)

    def transfer_time(self, nbytes: int) -> float:
        """Expected one-way time of an `nbytes` message on an idle link (no jitter)."""
        serial = nbytes / self.bandwidth_bytes_per_s if self.bandwidth_bytes_per_s else 0.0
        return self.delay_s + serial


@dataclass
class _LinkState:
    free_at: float = 0.0
    last_due: float = 0.0


@dataclass
class LinkEmulator:
    """Per-peer link specs (`links[peer]`, else `default`) and their running state.

    Peers are named by the channel using it: the address a client dials, or a
    server's peer identity decoded as text, or a collective member's rank as str.
    """

    links: Mapping[str, LinkSpec] = field(default_factory=dict)
    default: LinkSpec | None = None
    seed: int | None = None
    clock: Callable[[], float] = time.monotonic
    shared_uplink: bool = True

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._start = self.clock()
        self._state: dict[str, _LinkState] = {}
        self._uplink = _LinkState()
        self.dropped = 0

    def spec_for(self, peer: str) -> LinkSpec | None:
        return self.links.get(peer, self.default)

    def schedule(self, peer: str, nbytes: int, now: float | None = None) -> float | None:
        """The time a message of `nbytes` to `peer` leaves, or None if it is lost."""
        spec = self.spec_for(peer)
        now = self.clock() if now is None else now
        if spec is None:
            return now
        elapsed = now - self._start
        if any(start <= elapsed < end for start, end in spec.disconnect_windows):
            self.dropped += 1
            log.debug("link to %s is down (disconnect window): message dropped", peer)
            return None
        if spec.loss and self._rng.random() < spec.loss:
            self.dropped += 1
            log.debug("link to %s lost a message of %d bytes", peer, nbytes)
            return None
        state = self._state.setdefault(peer, _LinkState())
        uplink = self._uplink if self.shared_uplink else state
        serial = nbytes / spec.bandwidth_bytes_per_s if spec.bandwidth_bytes_per_s else 0.0
        uplink.free_at = max(now, uplink.free_at) + serial
        state.free_at = uplink.free_at
        jitter = self._rng.uniform(0.0, spec.jitter_s) if spec.jitter_s else 0.0
        due = max(state.free_at + spec.delay_s + jitter, state.last_due)
        state.last_due = due
        return due


class Outbox:
    """Messages held until their departure time; flushed by the socket's owner."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, due: float, send: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, send))

    def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def flush(self) -> None:
        """Send every message whose time has come."""
        now = self._clock()
        while self._heap and self._heap[0][0] <= now:
            _, _, send = heapq.heappop(self._heap)
            send()

    def drain(self, deadline: float) -> None:
        """Wait for and send held messages until empty or `deadline` (used on close)."""
        while self._heap:
            due = self._heap[0][0]
            if due > deadline:
                log.debug("closing with %d emulated messages still in flight", len(self._heap))
                self._heap.clear()
                return
            delay = due - self._clock()
            if delay > 0:
                time.sleep(delay)
            self.flush()

    def poll_timeout(self, deadline: float) -> float:
        """Seconds to wait for input before the deadline or the next departure."""
        due = self.next_due()
        limit = deadline if due is None else min(deadline, due)
        return max(0.0, limit - self._clock())
