"""The dashboard's routes: the page and its assets (public), its state and `/metrics`
(behind the API key when the server has one).

How the page authenticates: it holds no secret, so it loads without a key. Its script
reads the key from the URL's fragment (`/dashboard#key=...`: browsers never send the
fragment to a server, so it appears in no access log), keeps it in sessionStorage,
removes it from the address bar, and sends it as `Authorization: Bearer` on every
request; with no key, or a wrong one, the page asks for it. Keys never travel in a
query string. The page allows scripts, styles and connections to its own origin only
(Content-Security-Policy), so nothing is fetched from elsewhere — devices are often
offline, and a dashboard must not leak what it shows.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from typing import Any

import anyio.to_thread
from prometheus_client import CollectorRegistry
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edge_runtime.metrics.exporter import CONTENT_TYPE, render

ASSETS = {"dashboard.js": "text/javascript; charset=utf-8",
          "dashboard.css": "text/css; charset=utf-8"}
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "connect-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

Authorize = Callable[[Request], None]


def asset(name: str) -> bytes:
    """A file of the dashboard shipped in the package (edge_runtime/assets/dashboard)."""
    return (resources.files("edge_runtime") / "assets" / "dashboard" / name).read_bytes()


def dashboard_routes(state: Callable[[], dict[str, Any]], authorize: Authorize) -> list[Route]:
    """`/dashboard`, `/dashboard/assets/{name}` and `/dashboard/state` (which calls
    `authorize(request)`, raising to refuse, then `state()` off the event loop)."""

    async def page(request: Request) -> Response:
        return Response(asset("index.html"), media_type="text/html; charset=utf-8",
                        headers=PAGE_HEADERS)

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:
            return Response(f"no dashboard asset {name!r}\n", status_code=404,
                            media_type="text/plain")
        return Response(asset(name), media_type=ASSETS[name], headers=PAGE_HEADERS)

    async def current(request: Request) -> Response:
        authorize(request)
        body = await anyio.to_thread.run_sync(state)
        return Response(json.dumps(body, default=str), media_type="application/json",
                        headers={"Cache-Control": "no-store"})

    return [Route("/dashboard", page, methods=["GET"]),
            Route("/dashboard/assets/{name}", static, methods=["GET"]),
            Route("/dashboard/state", current, methods=["GET"])]


def metrics_route(registry: CollectorRegistry, authorize: Authorize) -> Route:
    """`/metrics` in Prometheus text format (scrapers send the key as a bearer token)."""

    async def metrics(request: Request) -> Response:
        authorize(request)
        body = await anyio.to_thread.run_sync(render, registry)
        return Response(body, media_type=CONTENT_TYPE)

    return Route("/metrics", metrics, methods=["GET"])


__all__ = ["ASSETS", "dashboard_routes", "metrics_route"]
