"""`HttpMetrics`: ASGI middleware counting an HTTP server's requests and their latency.

Pure ASGI (not Starlette's BaseHTTPMiddleware), so a streamed answer is neither
buffered nor delayed: a request's time runs until the last byte of its body left, which
for a stream is when the generation ended. Routes outside the known set are counted
as "other", so probing random paths cannot grow the metric set.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edge_runtime.metrics.counters import Histogram, HistogramSnapshot


class HttpCounters:
    """Requests by (route, method, status) and latency by route; thread-safe."""

    def __init__(self, routes: Iterable[str]) -> None:
        self.routes = frozenset(routes)
        self._lock = threading.Lock()
        self._requests: Counter[tuple[str, str, str]] = Counter()
        self._latency: dict[str, Histogram] = {}

    def route(self, path: str) -> str:
        if path in self.routes:
            return path
        if path.startswith("/dashboard/"):  # assets
            return "/dashboard/*"
        return "other"

    def observe(self, path: str, method: str, status: int, seconds: float) -> None:
        route = self.route(path)
        with self._lock:
            self._requests[(route, method, str(status))] += 1
            histogram = self._latency.get(route)
            if histogram is None:
                histogram = self._latency[route] = Histogram()
        histogram.observe(seconds)

    def requests(self) -> dict[tuple[str, str, str], int]:
        with self._lock:
            return dict(self._requests)

    def latency(self) -> dict[str, HistogramSnapshot]:
        with self._lock:
            histograms = dict(self._latency)
        return {route: h.snapshot() for route, h in histograms.items()}


class HttpMetrics:
    """Wraps an ASGI app; every HTTP request is counted in `counters` when it ends."""

    def __init__(self, app: ASGIApp, counters: HttpCounters) -> None:
        self.app = app
        self.counters = counters

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: dict[str, Any] = {"code": 500}

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.counters.observe(str(scope.get("path", "")), str(scope.get("method", "")),
                                  status["code"], time.perf_counter() - started)


__all__ = ["HttpCounters", "HttpMetrics"]
