"""Which agents `status` and `dashboard` watch: addresses (`--keys`), or `--local N`.

Both commands only look: they never deploy. `--local N` starts N agents on this
machine (optionally emulating `--presets`) for as long as the command runs, which is
how to try the table or the dashboard without devices.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def add_watch_arguments(parser: argparse.ArgumentParser, *, positional: bool) -> None:
    if positional:
        parser.add_argument("addresses", nargs="*", metavar="ADDRESS",
                            help="agent addresses (host, host:port or comma-separated "
                            "lists), e.g. 10.0.0.2:7700 10.0.0.3")
    else:
        parser.add_argument("--connect", dest="addresses", action="append", default=[],
                            metavar="ADDR,...", help="agent addresses, comma-separated")
    parser.add_argument("--local", type=int, default=None, metavar="N",
                        help="start N agents on this machine and watch them")
    parser.add_argument("--presets", default=None, metavar="A,B",
                        help="device presets the --local agents emulate")
    parser.add_argument("--keys", type=Path, default=None,
                        help="CURVE keys directory (default ~/.config/edge-runtime/keys); "
                        "each agent's key is looked up among its trusted keys")
    parser.add_argument("--insecure", action="store_true",
                        help="talk to agents without CURVE (experiments only)")
    parser.add_argument("--timeout-s", type=float, default=None,
                        help="how long to wait for each agent's answer (default 2)")


def _addresses(given: list[str]) -> list[str]:
    from edge_runtime.discovery import parse_endpoints

    return parse_endpoints([part for entry in given for part in entry.split(",") if part])


@contextlib.contextmanager
def open_monitor(args: argparse.Namespace) -> Iterator[Any]:
    """A `ClusterMonitor` of the agents the arguments name, closed on exit (with the
    local agents it started)."""
    from edge_runtime.errors import ConfigError
    from edge_runtime.metrics.monitor import DEFAULT_TIMEOUT_S, ClusterMonitor

    timeout_s = args.timeout_s or DEFAULT_TIMEOUT_S
    if args.local is not None and args.addresses:
        raise ConfigError("give agent addresses or --local N, not both")
    if args.local is None:
        if not args.addresses:
            raise ConfigError("name the agents to watch (e.g. 10.0.0.2:7700,10.0.0.3), or "
                              "use --local N to start N agents here")
        with ClusterMonitor.connect(_addresses(args.addresses), args.keys,
                                    insecure=args.insecure, timeout_s=timeout_s) as monitor:
            yield monitor
        return
    import edge_runtime as er

    if args.local < 1:
        raise ConfigError(f"--local must be at least 1, got {args.local}")
    presets: list[str | None] | None = None
    if args.presets:
        presets = [p.strip() or None for p in args.presets.split(",")]
        if len(presets) != args.local:
            raise ConfigError(f"--presets lists {len(presets)} presets for --local "
                              f"{args.local} agents")
    print(f"starting {args.local} local agent(s)", file=sys.stderr)
    with er.local_cluster(args.local, presets=presets, insecure=args.insecure,
                          log_level="WARNING") as cluster, \
            ClusterMonitor.of_cluster(cluster, timeout_s=timeout_s) as monitor:
        yield monitor


__all__ = ["add_watch_arguments", "open_monitor"]
