"""What the HTTP server saw of its generations: tokens, rates, the last request's timeline.

Fed by the API (`serve/app.py`) as tokens leave for clients, read by `/metrics`
(`serve_collector.py`) and the dashboard (its tokens/s and request-rate figures and
the last request's timeline). The timeline is the latency breakdown the server
already has — time in the queue and prefill until the first token, then each
token's time — until per-agent trace spans are attached to requests.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from edge_runtime.metrics.counters import Histogram, HistogramSnapshot

RATE_WINDOW_S = 10.0
"""Live rates (tokens/s, requests/s) are averaged over this many recent seconds."""

MAX_TIMELINE_TOKENS = 2048
"""Token times kept for the last request's timeline (a longer answer keeps its first)."""


@dataclass(frozen=True)
class RequestTimeline:
    """One finished request: when each of its tokens left, in seconds since submission."""

    id: str
    endpoint: str  # "chat" or "completions"
    prompt_tokens: int
    started_at: float  # wall clock (time.time()) at submission
    token_s: tuple[float, ...]
    total_s: float
    finish: str | None
    served_by: str = "cluster"
    error: str | None = None

    @property
    def first_token_s(self) -> float | None:
        return self.token_s[0] if self.token_s else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "first_token_s": self.first_token_s}


@dataclass
class _Open:
    rid: str
    endpoint: str
    prompt_tokens: int
    started_at: float
    started: float
    token_s: list[float] = field(default_factory=list)
    served_by: str = "cluster"


class ServeStats:
    """Thread-safe counts of a server's generations (HTTP worker threads call in)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._open: dict[str, _Open] = {}
        self._token_times: deque[float] = deque()
        self._request_times: deque[float] = deque()
        self.tokens_total = 0
        self.finished: Counter[str] = Counter()  # by finish reason ("error" for failures)
        self.errors: Counter[tuple[str, int]] = Counter()  # (error type, HTTP status)
        self.ttft = Histogram()
        self.duration = Histogram()
        self._last: RequestTimeline | None = None

    def started(self, key: str, rid: str, endpoint: str, prompt_tokens: int) -> None:
        now = self._clock()
        with self._lock:
            self._open[key] = _Open(rid, endpoint, prompt_tokens, time.time(), now)
            self._request_times.append(now)
            self._trim(now)

    def token(self, key: str, seconds: float, served_by: str = "cluster") -> None:
        """A token of request `key` left for its client, `seconds` after submission."""
        now = self._clock()
        first = False
        with self._lock:
            self.tokens_total += 1
            self._token_times.append(now)
            self._trim(now)
            request = self._open.get(key)
            if request is not None:
                first = not request.token_s
                if len(request.token_s) < MAX_TIMELINE_TOKENS:
                    request.token_s.append(seconds)
                request.served_by = served_by
        if first:
            self.ttft.observe(seconds)

    def ended(self, key: str, finish: str | None, error: str | None = None) -> None:
        now = self._clock()
        with self._lock:
            request = self._open.pop(key, None)
            if request is None:
                return
            total = now - request.started
            self.finished[finish or ("error" if error else "unknown")] += 1
            self._last = RequestTimeline(request.rid, request.endpoint, request.prompt_tokens,
                                         request.started_at, tuple(request.token_s), total,
                                         finish, request.served_by, error)
        self.duration.observe(total)

    def error(self, error_type: str, status: int) -> None:
        with self._lock:
            self.errors[(error_type, status)] += 1

    def _trim(self, now: float) -> None:
        for times in (self._token_times, self._request_times):
            while times and now - times[0] > RATE_WINDOW_S:
                times.popleft()

    def rates(self) -> tuple[float, float]:
        """(tokens/s, requests/s) over the last `RATE_WINDOW_S` seconds."""
        with self._lock:
            self._trim(self._clock())
            return (len(self._token_times) / RATE_WINDOW_S,
                    len(self._request_times) / RATE_WINDOW_S)

    def last(self) -> RequestTimeline | None:
        with self._lock:
            return self._last

    def in_flight(self) -> int:
        with self._lock:
            return len(self._open)

    def histograms(self) -> tuple[HistogramSnapshot, HistogramSnapshot]:
        return self.ttft.snapshot(), self.duration.snapshot()


__all__ = ["RATE_WINDOW_S", "RequestTimeline", "ServeStats"]
