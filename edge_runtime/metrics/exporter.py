"""Serving a registry on its own port (`--metrics-port`), and rendering it for a route.

Each process builds its own `CollectorRegistry` (never prometheus_client's global
one): an app that embeds the SDK keeps its own metrics, and tests can run several
exporters in one process. The port binds 127.0.0.1 unless told otherwise: metrics
name agents, deployments and peers, which is nobody else's business by default.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST, start_http_server

from edge_runtime.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_METRICS_HOST = "127.0.0.1"
CONTENT_TYPE = CONTENT_TYPE_LATEST


@dataclass
class Exporter:
    """A running metrics endpoint; `url` is where Prometheus scrapes it."""

    url: str
    _server: Any
    _thread: Any

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)


def check_port(port: int) -> None:
    if not 0 <= port <= 65535:
        raise ConfigError(f"--metrics-port must be in 0..65535, got {port}")


def start_exporter(registry: CollectorRegistry, port: int,
                   host: str = DEFAULT_METRICS_HOST) -> Exporter:
    """Serve `registry` at http://host:port/metrics from a daemon thread (port 0: any)."""
    check_port(port)
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as error:
        raise ConfigError(f"cannot serve metrics on {host}:{port}: "
                          f"{error.strerror or error}; choose another --metrics-port") from None
    raw_host, bound_port = server.server_address[:2]
    bound_host = raw_host.decode() if isinstance(raw_host, bytes) else str(raw_host)
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    url = f"http://{shown}:{bound_port}/metrics"
    log.info("metrics at %s", url)
    return Exporter(url, server, thread)


def render(registry: CollectorRegistry) -> bytes:
    """The registry in Prometheus text format (for an HTTP route of an app)."""
    return generate_latest(registry)


__all__ = ["CONTENT_TYPE", "DEFAULT_METRICS_HOST", "Exporter", "check_port", "render",
           "start_exporter"]
