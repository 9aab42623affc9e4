"""The cluster options shared by `generate` and `serve`, and opening that cluster.

`--local N` agents on this machine (optionally emulating `--presets`) or `--connect` to
real ones (`--keys`, or `--insecure`), the memory budget, 4-bit weights and the
context every LLM command deploys with.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--local", type=int, default=None, metavar="N",
                       help="start N agents on this machine (default 1, or one per preset)")
    where.add_argument("--connect", default=None, metavar="ADDR,...",
                       help="comma-separated agent addresses, e.g. 10.0.0.2:7700,10.0.0.3:7700")
    parser.add_argument("--presets", default=None, metavar="A,B",
                        help="device presets the --local agents emulate, e.g. "
                        "raspberry-pi-4,jetson-orin-nano (None = this machine's speed)")
    parser.add_argument("--keys", type=Path, default=None,
                        help="CURVE keys directory for --connect")
    parser.add_argument("--insecure", action="store_true",
                        help="talk to agents without CURVE (experiments only)")
    parser.add_argument("--memory-budget", default=None, metavar="SIZE",
                        help="memory each agent may use for its share, e.g. 64MB (a larger "
                        "share streams from disk through a sliding window)")
    parser.add_argument("--quantize", choices=["q4"], default=None,
                        help="q4: 4-bit weights (onnxruntime MatMulNBits, ~6x fewer bytes per "
                        "token; every share must fit resident in --memory-budget); "
                        "default fp32")
    parser.add_argument("--sync", choices=["fp32", "bf16", "fp16", "q8"], default="fp32",
                        help="format the tensor group's allreduces carry activations in: "
                        "fp32 (default, exact), or lossy bf16, fp16, q8 (8-bit blocks, "
                        "0.28 of fp32's bytes) for slow links")
    parser.add_argument("--max-context", type=int, default=512,
                        help="tokens the KV cache holds per sequence (prompt + new tokens), "
                        "default 512")


def presets_of(args: argparse.Namespace) -> list[str | None] | None:
    from edge_runtime.errors import ConfigError

    if not args.presets:
        return None
    names: list[str | None] = [
        None if p.strip().lower() in ("", "none") else p.strip() for p in args.presets.split(",")
    ]
    if args.local is not None and len(names) != args.local:
        raise ConfigError(f"--presets lists {len(names)} presets for --local {args.local} agents")
    return names


def open_cluster(args: argparse.Namespace) -> Any:
    import edge_runtime as er
    from edge_runtime.errors import ConfigError

    if args.connect:
        if args.presets:
            raise ConfigError("--presets applies to --local agents only")
        from edge_runtime.discovery import discover

        endpoints = discover(args.connect, mdns=False)
        print(f"connecting to {len(endpoints)} agent(s): {', '.join(endpoints)}", file=sys.stderr)
        if args.insecure:
            return er.connect(endpoints, insecure=True)
        return er.connect(endpoints, keys=args.keys)
    presets = presets_of(args)
    count = args.local or (len(presets) if presets else 1)
    if count < 1:
        raise ConfigError(f"--local must be at least 1, got {count}")
    print(f"starting {count} local agent(s)" + (f": {args.presets}" if presets else ""),
          file=sys.stderr)
    # the local agents may read the checkpoint the user named in place (no copy per agent)
    return er.local_cluster(count, presets=presets, insecure=args.insecure, log_level="WARNING",
                            allow_checkpoint_dirs=[args.checkpoint])


__all__ = ["add_cluster_arguments", "open_cluster", "presets_of"]
