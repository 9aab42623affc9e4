"""The live dashboard: a page (plain HTML, JS and CSS shipped in the package, nothing
from a CDN) served by `edge-runtime serve` at /dashboard and by `edge-runtime
dashboard`, with its JSON state at /dashboard/state."""

from edge_runtime.dashboard.routes import dashboard_routes, metrics_route
from edge_runtime.dashboard.state import DashboardContext, dashboard_state, plan_lanes
from edge_runtime.dashboard.wiring import bearer_check, dashboard_app, observe_server

__all__ = ["DashboardContext", "bearer_check", "dashboard_app", "dashboard_routes",
           "dashboard_state", "metrics_route", "observe_server", "plan_lanes"]
