"""`edge-runtime demo`: three emulated devices run the multi-exit digits model together.

With no arguments it is the README's first command. Options exist for trying
other presets, a shorter run, or keeping the numbers as JSON.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_runtime.cli.trace import add_trace_argument

DEFAULT_PRESETS = "raspberry-pi-4,jetson-orin-nano,phone"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--presets",
        default=DEFAULT_PRESETS,
        metavar="A,B,C",
        help=f"device presets to emulate, one agent each (default: {DEFAULT_PRESETS})",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="classify only the first N test images (default: all 360)",
    )
    parser.add_argument(
        "--assets",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder with digits_exits.onnx, test_split.npz and calibration.npz",
    )
    parser.add_argument(
        "--json",
        dest="report_json",
        type=Path,
        default=None,
        metavar="FILE",
        help="also write the report's numbers as JSON",
    )
    add_trace_argument(parser)  # a burst of pipelined digits requests, with a PNG beside it


def run(args: argparse.Namespace) -> int:
    from edge_runtime.demo import DemoOptions, default_steps, run_demo
    from edge_runtime.demo.assets import find_assets
    from edge_runtime.errors import ConfigError

    presets = tuple(p.strip() for p in args.presets.split(",") if p.strip())
    if len(presets) < 2:
        raise ConfigError("--presets needs at least two devices to split the model between")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {args.limit}")
    find_assets(args.assets)  # fail before starting any agent if the model is missing
    options = DemoOptions(
        presets=presets, assets=args.assets, limit=args.limit, report_json=args.report_json
    )
    steps = default_steps()
    if args.trace is not None:
        from edge_runtime.demo.tracing import TraceRequests

        steps.insert(-1, TraceRequests(args.trace))  # before the summary
    return run_demo(options, steps)
