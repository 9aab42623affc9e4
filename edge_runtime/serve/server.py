"""Running the API on uvicorn until SIGTERM or SIGINT, then shutting down in order.

Why an explicit order: a stream cut mid-sentence is a visible failure, and a
deployment left on the agents holds their memory until its lease lapses. On SIGTERM
(or Ctrl-C) uvicorn stops accepting connections and lets the answers in flight finish
for up to `drain_s` seconds; past that it cancels them (each cancelled answer cancels
its generation). Then the scheduler is closed (anything still queued is cancelled)
and the deployment unloaded from every agent; the caller's `with` around the
cluster tears that down last.

uvicorn re-raises the signal it caught once it has stopped (so that a default
handler would end the process); the handler installed here around it absorbs that,
so the teardown above still runs and the process exits normally.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import socket
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

from edge_runtime.errors import ConfigError

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from edge_runtime.sdk.llm import LlmDeployment
    from edge_runtime.sdk.scheduler import GenerationScheduler

log = logging.getLogger(__name__)

# How long answers in flight may run on after SIGTERM before they are cancelled.
DEFAULT_DRAIN_S = 30.0
# How long closing the scheduler waits for a cancelled generation to stop.
CLOSE_S = 10.0
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free one). Bound before the
    deployment starts, so a port in use fails in a second, not after a deploy."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as error:
        raise ConfigError(f"--host {host!r} does not resolve: {error}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as error:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {error.strerror or error}; "
                          "choose another --port or stop what uses it") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    """http://host:port of a bound socket (IPv6 in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@contextlib.contextmanager
def _absorb_signals(server: uvicorn.Server) -> Iterator[None]:
    """SIGINT/SIGTERM ask `server` to stop, around uvicorn's own handlers (see the
    module docstring); the previous handlers come back afterwards."""

    def stop(signum: int, frame: FrameType | None) -> None:
        server.should_exit = True

    previous = {sig: signal.signal(sig, stop) for sig in _SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve(app: Starlette, sock: socket.socket, *, drain_s: float = DEFAULT_DRAIN_S) -> None:
    """Serve `app` on `sock` until SIGTERM or SIGINT; answers in flight then get
    `drain_s` seconds to finish. Signals are caught only in the main thread."""
    server = uvicorn.Server(make_config(app, drain_s))
    with _absorb_signals(server):
        server.run(sockets=[sock])


def make_config(app: Starlette, drain_s: float = DEFAULT_DRAIN_S) -> uvicorn.Config:
    """uvicorn's settings: logging left to the process's own configuration (requests
    logged at INFO), `drain_s` of graceful shutdown, no lifespan events (the app has
    none; the teardown is `serve_deployment`'s)."""
    level = logging.getLogger().getEffectiveLevel()
    return uvicorn.Config(app, log_config=None, log_level=level,
                          access_log=level <= logging.INFO, lifespan="off",
                          timeout_graceful_shutdown=max(1, math.ceil(drain_s)))


def serve_deployment(app: Starlette, sock: socket.socket, scheduler: GenerationScheduler,
                     llm: LlmDeployment, *, drain_s: float = DEFAULT_DRAIN_S) -> None:
    """`serve`, then close the scheduler and unload the deployment, whatever ended it."""
    try:
        serve(app, sock, drain_s=drain_s)
    finally:
        log.info("stopping: closing the scheduler and unloading %s", llm.id)
        app.state.inflight.cancel_all()
        scheduler.close(cancel=True, timeout_s=CLOSE_S)
        llm.unload()


@contextlib.contextmanager
def background(app: Starlette, host: str = "127.0.0.1", port: int = 0,
               drain_s: float = 5.0, start_s: float = 20.0) -> Iterator[str]:
    """Serve `app` from a thread of this process (no signal handling) while the `with`
    lasts; yields its base URL (http://HOST:PORT). For the demo and embedding apps."""
    sock = bind(host, port)
    server = uvicorn.Server(make_config(app, drain_s))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name="http-server", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + start_s
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError(f"the HTTP server did not start within {start_s:g} s")
            time.sleep(0.02)
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(drain_s + 5)
        sock.close()


__all__ = ["DEFAULT_DRAIN_S", "background", "bind", "make_config", "serve",
           "serve_deployment", "url_of"]
