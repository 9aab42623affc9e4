"""`edge-runtime dashboard`: the live dashboard over agents, without serving a model.

    edge-runtime dashboard --connect 10.0.0.2:7700,10.0.0.3 --keys ~/.config/edge-runtime/keys
    edge-runtime dashboard --local 3 --port 8080

Serves the page at http://127.0.0.1:8080/dashboard (agents with health and memory, what
each holds of every deployment as lanes) and the agents' `/metrics`, until SIGTERM or
Ctrl-C. `edge-runtime serve` shows the same page with live rates, the last request's
timeline and a chat box. With `--api-key` (or EDGE_RUNTIME_API_KEY) the state and the
metrics want `Authorization: Bearer KEY`; open `/dashboard#key=KEY` in a browser.
"""

from __future__ import annotations

import argparse
import os
import sys

from edge_runtime.cli.watch_args import add_watch_arguments, open_monitor

API_KEY_ENV = "EDGE_RUNTIME_API_KEY"
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_watch_arguments(parser, positional=False)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8080, help="TCP port (default 8080; 0: any)")
    parser.add_argument("--api-key", default=None,
                        help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV})")


def run(args: argparse.Namespace) -> int:
    from edge_runtime.dashboard import dashboard_app
    from edge_runtime.errors import ConfigError
    from edge_runtime.serve.server import bind, serve, url_of

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {args.port}")
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    sock = bind(args.host, args.port)
    if api_key is None and args.host not in LOOPBACK:
        print(f"warning: listening on {args.host} without an API key: anyone who can reach "
              f"this port sees the cluster (set {API_KEY_ENV})", file=sys.stderr)
    try:
        with open_monitor(args) as monitor:
            app = dashboard_app(monitor, api_key=api_key, title="edge-runtime dashboard")
            print(f"dashboard at {url_of(sock)}/dashboard"
                  + ("#key=<your API key>" if api_key else "")
                  + " (SIGTERM or Ctrl-C stops)", flush=True)
            serve(app, sock, drain_s=1.0)
    finally:
        sock.close()
    return 0
