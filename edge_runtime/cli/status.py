"""`edge-runtime status`: a table of agents — device, health, memory, RTT, deployments.

    edge-runtime status 10.0.0.2:7700,10.0.0.3 --keys ~/.config/edge-runtime/keys
    edge-runtime status --local 3 --watch

Asks each agent directly (a ping, its status and, once, its profile) from sockets of
its own, so it works next to a running app or server. `--watch` redraws every
`--interval` seconds until Ctrl-C (or `--count` tables); `--json` prints the snapshot.
Exit status 0 when every agent answered, 1 when one did not.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING

from edge_runtime.cli.watch_args import add_watch_arguments, open_monitor

if TYPE_CHECKING:
    from collections.abc import Sequence

    from edge_runtime.metrics.snapshot import ClusterSnapshot, LinkRow

CLEAR = "\x1b[H\x1b[2J"
COLUMNS = ("AGENT", "HEALTH", "MEMORY USED/BUDGET", "RTT", "HEARD", "REQS", "ERRS",
           "DEPLOYMENTS", "DEVICE")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_watch_arguments(parser, positional=True)
    parser.add_argument("--watch", action="store_true", help="redraw until Ctrl-C")
    parser.add_argument("--interval", type=float, default=2.0,
                        help="seconds between redraws with --watch (default 2)")
    parser.add_argument("--count", type=int, default=None,
                        help="with --watch, stop after this many tables")
    parser.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    parser.add_argument("--links", action="store_true",
                        help="also measure each pair of agents' link (round trip, bandwidth; "
                        "agents must know each other: a coordinator's cluster, or trusted "
                        "keys)")


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.1f} ms"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def rows(snapshot: ClusterSnapshot) -> list[tuple[str, ...]]:
    table: list[tuple[str, ...]] = []
    for agent in snapshot.agents:
        memory = f"{_size(agent.memory_used)} / {_size(agent.memory_budget)}"
        deployments = "; ".join(d.detail for d in agent.deployments) or "none"
        health = agent.health if agent.available else f"unreachable: {agent.error}"
        table.append((agent.name, _clip(health, 48), memory if agent.available else "-",
                      _ms(agent.rtt_s), _ms(agent.last_seen_s),
                      str(agent.requests_served) if agent.available else "-",
                      str(agent.errors_answered) if agent.available else "-",
                      _clip(deployments, 60), _clip(agent.profile, 70)))
    return table


def render(snapshot: ClusterSnapshot) -> str:
    """The snapshot as an aligned text table (one row per agent)."""
    table = [COLUMNS, *rows(snapshot)]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
             for row in table]
    up = sum(1 for a in snapshot.agents if a.available)
    stamp = time.strftime("%H:%M:%S", time.localtime(snapshot.taken_at))
    return "\n".join([f"{up} of {len(snapshot.agents)} agent(s) answering at {stamp}",
                      *lines])


def render_links(links: Sequence[LinkRow]) -> str:
    if not links:
        return "no links (fewer than two agents answering)"
    table = [("LINK", "RTT", "BANDWIDTH")] + [
        (f"{row.source} -> {row.target}", _ms(row.rtt_s),
         f"{row.bandwidth_bytes_per_s / 1e6:.1f} MB/s" if row.bandwidth_bytes_per_s
         else f"- ({_clip(row.error or '?', 80)})") for row in links]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    return "\n".join("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
                     for row in table)


def run(args: argparse.Namespace) -> int:
    from edge_runtime.errors import ConfigError

    if args.interval <= 0:
        raise ConfigError(f"--interval must be positive, got {args.interval}")
    with open_monitor(args) as monitor:
        shown = 0
        while True:
            snapshot = monitor.snapshot(max_age_s=0.0)
            links = monitor.links() if args.links else None
            if args.json:
                data = snapshot.to_dict()
                if links is not None:
                    data["links"] = [row.to_dict() for row in links]
                print(json.dumps(data, default=str), flush=True)
            else:
                redraw = args.watch and sys.stdout.isatty()
                text = render(snapshot) + ("" if links is None else "\n\n" + render_links(links))
                print((CLEAR if redraw else "") + text + ("" if redraw else "\n"), flush=True)
            shown += 1
            if not args.watch or (args.count is not None and shown >= args.count):
                return 0 if all(a.available for a in snapshot.agents) else 1
            time.sleep(args.interval)
