"""Adding `/metrics` and the dashboard to an app: the server's and the standalone one.

`observe_server` is what `serve.create_app` calls: it creates the server's counters
(`ServeStats`, `HttpCounters`), its registry, the dashboard routes, and wraps the app
in the HTTP metrics middleware; the API feeds `app.state.serve_stats` as tokens leave.
`dashboard_app` is the app of `edge-runtime dashboard`: the same page over a monitor
alone (no model, so no chat box).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from edge_runtime.dashboard.routes import Authorize, dashboard_routes, metrics_route
from edge_runtime.dashboard.state import DashboardContext, dashboard_state
from edge_runtime.metrics.http import HttpCounters, HttpMetrics
from edge_runtime.metrics.monitor import ClusterMonitor
from edge_runtime.metrics.serve_collector import (
    MonitorCollector,
    ServeSources,
    serve_registry,
)
from edge_runtime.metrics.serve_stats import ServeStats

API_ROUTES = ("/v1/models", "/v1/completions", "/v1/chat/completions", "/metrics",
              "/dashboard", "/dashboard/state")


def observe_server(app: Starlette, authorize: Authorize, *, model: str,
                   queued: Callable[[], int], running: Callable[[], int], slots: int,
                   monitor: ClusterMonitor | None, chat: bool = True,
                   plan_text: str | None = None) -> ServeSources:
    """Give a serving app `/metrics` and (with a monitor) the dashboard; returns the
    sources its collector reads (also `app.state.serve_sources`; the registry is
    `app.state.metrics_registry`, for an exporter on a port of its own)."""
    sources = ServeSources(ServeStats(), HttpCounters(API_ROUTES), queued, running, slots,
                           monitor)
    registry = serve_registry(sources)
    app.router.routes.append(metrics_route(registry, authorize))
    if monitor is not None:
        context = DashboardContext(monitor, title=f"edge-runtime serve: {model}",
                                   model=model if chat else None, serve=sources,
                                   plan_text=plan_text)
        app.router.routes.extend(dashboard_routes(lambda: dashboard_state(context),
                                                  authorize))
    app.add_middleware(HttpMetrics, counters=sources.http)
    app.state.serve_sources = sources
    app.state.serve_stats = sources.stats
    app.state.metrics_registry = registry
    return sources


def bearer_check(api_key: str | None) -> Authorize:
    """An `authorize` that wants `Authorization: Bearer <api_key>` (none: anyone)."""
    expected = None if not api_key else api_key.encode()

    def authorize(request: Request) -> None:
        if expected is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                 expected):
            raise HTTPException(401, "send the dashboard's key as 'Authorization: Bearer "
                                     "<key>' (open /dashboard#key=KEY)")

    return authorize


async def _on_http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    headers = {"WWW-Authenticate": "Bearer"} if error.status_code == 401 else None
    return JSONResponse({"error": {"message": str(error.detail)}},
                        status_code=error.status_code, headers=headers)


def dashboard_app(monitor: ClusterMonitor, *, api_key: str | None = None,
                  title: str = "edge-runtime") -> Starlette:
    """The standalone dashboard (`edge-runtime dashboard`): the page, its state and the
    agents' `/metrics`, over `monitor`."""
    authorize = bearer_check(api_key)
    context = DashboardContext(monitor, title=title)

    async def home(request: Request) -> Response:
        return RedirectResponse("/dashboard")

    routes: list[Any] = [Route("/", home, methods=["GET"]),
                         *dashboard_routes(lambda: dashboard_state(context), authorize)]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MonitorCollector(monitor))
    routes.append(metrics_route(registry, authorize))
    return Starlette(routes=routes, exception_handlers={HTTPException: _on_http_error})


__all__ = ["API_ROUTES", "bearer_check", "dashboard_app", "observe_server"]
