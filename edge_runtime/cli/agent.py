"""`edge-runtime agent`: run this device's agent daemon until SIGTERM.

Heavy imports (onnxruntime, zmq, the agent) happen in `run`, so `--help` is fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", default="tcp://0.0.0.0:7700",
                        help="control socket address (default tcp://0.0.0.0:7700; port 0 = any)")
    parser.add_argument("--name", default="",
                        help="agent name (default: host name plus its key's fingerprint, "
                             "e.g. pi-3fa9c1; preset@that with --preset)")
    parser.add_argument("--preset", default=None,
                        help="emulate this device preset (see `edge-runtime profile --list`)")
    parser.add_argument("--memory-budget", default=None,
                        help="memory the agent may hold for deployments, e.g. 512MB or 1GB "
                             "(default: the preset's memory, else unlimited)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads per stage (default: the preset's cores, else onnxruntime's)")
    parser.add_argument("--cache-dir", type=Path, default=Path("~/.cache/edge-runtime/agent"),
                        help="where verified shards are kept across restarts")
    parser.add_argument("--allow-checkpoint-dir", type=Path, action="append", default=[],
                        metavar="DIR", dest="allow_checkpoint_dirs",
                        help="let deploys name LLM checkpoints under DIR for this agent to read "
                             "in place (repeatable; default none: the files are sent to it)")
    parser.add_argument("--profile-cache", type=Path, default=None,
                        help="profile cache directory (default ~/.cache/edge-runtime/profiles)")
    parser.add_argument("--refresh-profile", action="store_true",
                        help="measure this device again even if a cached profile is fresh")
    security = parser.add_mutually_exclusive_group()
    security.add_argument("--keys", type=Path, default=None,
                          help="CURVE keys directory (default ~/.config/edge-runtime/keys)")
    security.add_argument("--insecure", action="store_true",
                          help="no encryption or authentication (local experiments only)")
    parser.add_argument("--ready-file", type=Path, default=None,
                        help="write {address, public_key, name, pid} as JSON here once listening")
    parser.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                        help="serve Prometheus metrics at http://HOST:PORT/metrics "
                             "(default: none; 0 = any free port)")
    parser.add_argument("--metrics-host", default="127.0.0.1",
                        help="address the metrics port binds (default 127.0.0.1: this "
                             "machine only)")
    parser.add_argument("--announce", action="store_true",
                        help="announce this agent on the local network over mDNS (needs "
                             "edge-runtime[discovery]); coordinators still connect only to "
                             "agents whose public key they trust")


def run(args: argparse.Namespace) -> int:
    from edge_runtime.agent.config import AgentConfig
    from edge_runtime.agent.startup import run_agent
    from edge_runtime.errors import ConfigError
    from edge_runtime.units import parse_size

    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {args.threads}")
    config = AgentConfig(
        listen=args.listen,
        name=args.name,
        preset=args.preset,
        memory_budget=None if args.memory_budget is None else parse_size(args.memory_budget),
        threads=args.threads,
        cache_dir=args.cache_dir.expanduser(),
        keys_dir=None if args.keys is None else args.keys.expanduser(),
        insecure=args.insecure,
        refresh_profile=args.refresh_profile,
        profile_cache=None if args.profile_cache is None else args.profile_cache.expanduser(),
        allowed_checkpoint_dirs=_checkpoint_dirs(args.allow_checkpoint_dirs),
    )
    if args.metrics_port is not None:
        _serve_metrics(args.metrics_host, args.metrics_port)
    return run_agent(config, ready_file=args.ready_file, announce=args.announce)


def _serve_metrics(host: str, port: int) -> None:
    """Start the agent's Prometheus exporter as soon as the agent serves."""
    from functools import partial

    from edge_runtime.agent.daemon import on_serve
    from edge_runtime.metrics import start_agent_exporter
    from edge_runtime.metrics.exporter import check_port

    check_port(port)  # a bad port fails before the agent profiles and listens
    on_serve(partial(start_agent_exporter, port=port, host=host))


def _checkpoint_dirs(given: list[Path]) -> tuple[Path, ...]:
    """Each --allow-checkpoint-dir, resolved (symlinks followed); it must exist."""
    from edge_runtime.errors import ConfigError

    resolved = tuple(path.expanduser().resolve() for path in given)
    for path in resolved:
        if not path.is_dir():
            raise ConfigError(f"--allow-checkpoint-dir {path} is not a directory")
    return resolved
