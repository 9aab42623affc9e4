"""Plain, thread-safe counters kept where events happen (the agent's loop and lanes,
the HTTP server) and turned into Prometheus families only when scraped.

Why not prometheus_client's own Counter/Histogram at the source: those register in a
process-global registry by default and tie every module that counts to the exporter.
These are a few integers under a lock, cheap enough to keep always (with or without
`--metrics-port`), readable by tests and the dashboard, and rendered by the collectors
in `agent_exporter.py` and `serve_collector.py` into a per-process `CollectorRegistry`.
"""

from __future__ import annotations

import bisect
import functools
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0)
"""Upper bounds of latency buckets: sub-millisecond control replies on loopback up to
a minute-long deploy or generation."""

MAX_PEERS = 64
"""Distinct peers counted by name; any further ones are summed as "other", so a flood
of short-lived clients cannot grow the metric set without bound."""

MAX_KINDS = 64
"""Distinct message kinds (and error types) counted by name; a hostile peer sending
made-up kinds only grows "other"."""

MAX_LABEL_CHARS = 80


@dataclass(frozen=True)
class HistogramSnapshot:
    """Cumulative bucket counts (one per bound, then +Inf), the sum and the count."""

    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]
    total: float
    count: int


class Histogram:
    """Observations in fixed buckets (Prometheus semantics: cumulative on read)."""

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS_S) -> None:
        self._bounds = bounds
        self._counts = [0] * (len(bounds) + 1)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self._bounds, value)
        with self._lock:
            self._counts[index] += 1
            self._sum += value

    def snapshot(self) -> HistogramSnapshot:
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative, running = [], 0
        for count in counts:
            running += count
            cumulative.append(running)
        return HistogramSnapshot(self._bounds, tuple(cumulative), total, running)


@functools.lru_cache(maxsize=1024)
def label(text: str | bytes) -> str:
    """A peer identity or name as a bounded, printable label value (cached: it is asked
    for on every message received and sent, of the few peers an agent has; the cap
    bounds what a stream of made-up identities can grow)."""
    shown = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    shown = "".join(c if c.isprintable() else "?" for c in shown)
    return shown[:MAX_LABEL_CHARS]


def _bounded(table: Any, key: Any, limit: int, other: Any = "other") -> Any:
    """`key` if it is counted already or there is room for it, else `other`."""
    return key if key in table or len(table) < limit else other


class WireCounters:
    """Requests, errors and handling time by message kind; bytes by peer (both ways)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: Counter[str] = Counter()
        self._errors: Counter[tuple[str, str]] = Counter()  # (kind, error type)
        self._latency: dict[str, Histogram] = {}
        self._sent: Counter[str] = Counter()
        self._received: Counter[str] = Counter()

    def request(self, kind: str, seconds: float | None = None) -> None:
        """One request of `kind` answered (or handed to its deployment); its handling
        time when the answer was immediate."""
        with self._lock:
            kind = _bounded(self._requests, label(kind), MAX_KINDS)
            self._requests[kind] += 1
            histogram = self._latency.get(kind) if seconds is not None else None
            if seconds is not None and histogram is None:
                histogram = self._latency[kind] = Histogram()
        if histogram is not None and seconds is not None:
            histogram.observe(seconds)

    def error(self, kind: str, error_type: str) -> None:
        key = (label(kind), label(error_type))
        with self._lock:
            self._errors[_bounded(self._errors, key, MAX_KINDS, ("other", "other"))] += 1

    def _peer(self, table: Counter[str], peer: str | bytes) -> str:
        name: str = _bounded(table, label(peer), MAX_PEERS)
        return name

    def sent(self, peer: str | bytes, nbytes: int) -> None:
        with self._lock:
            self._sent[self._peer(self._sent, peer)] += nbytes

    def received(self, peer: str | bytes, nbytes: int) -> None:
        with self._lock:
            self._received[self._peer(self._received, peer)] += nbytes

    def requests(self) -> dict[str, int]:
        with self._lock:
            return dict(self._requests)

    def errors(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._errors)

    def latency(self) -> dict[str, HistogramSnapshot]:
        with self._lock:
            histograms = dict(self._latency)
        return {kind: h.snapshot() for kind, h in histograms.items()}

    def bytes_sent(self) -> dict[str, int]:
        with self._lock:
            return dict(self._sent)

    def bytes_received(self) -> dict[str, int]:
        with self._lock:
            return dict(self._received)


__all__ = ["LATENCY_BUCKETS_S", "Histogram", "HistogramSnapshot", "WireCounters", "label"]
