"""`edge-runtime trace show FILE [--png OUT]`: read a trace written by `--trace FILE`.

    edge-runtime run model.onnx --local 3 --input image=x.npy --trace out.json
    edge-runtime trace show out.json --png timeline.png

Prints how long each device spent on each activity (compute, queue, receive,
allreduce, window waits, disk reads) and draws a timeline with one lane per device and
activity (needs the `plots` extra). The file is Chrome trace JSON: it also opens in
https://ui.perfetto.dev and chrome://tracing. The helpers below give `run`, `generate`,
`serve` and `demo` their `--trace FILE` option.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_runtime.trace.model import Trace


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="trace_command", metavar="ACTION", required=True)
    show = sub.add_parser("show", help="summarise a trace file and draw its timeline")
    show.add_argument("file", type=Path, help="a trace written by --trace FILE")
    show.add_argument("--png", type=Path, default=None, metavar="OUT",
                      help="draw the timeline as a PNG (needs edge-runtime[plots])")
    show.add_argument("--title", default=None, help="the picture's title")


def add_trace_argument(parser: argparse.ArgumentParser) -> None:
    """`--trace FILE` for a command that sends requests."""
    parser.add_argument("--trace", type=Path, default=None, metavar="FILE",
                        help="trace the requests on every agent and write Chrome trace JSON "
                             "(open in ui.perfetto.dev, or `edge-runtime trace show FILE`)")


def describe_run() -> dict[str, str]:
    """What a trace or a figure states about where it came from."""
    return {"command": "edge-runtime " + shlex.join(sys.argv[1:]),
            "machine": f"{platform.node()} ({platform.machine()}, "
                       f"{_cores()} cores, {platform.system()})",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)


def write_trace(trace: Trace, path: Path) -> None:
    """Save `trace` (with where it came from) and say where, and how to look at it."""
    from edge_runtime.trace.chrome import save

    out = save(trace.with_meta(**describe_run()), path)
    print(f"trace: {len(trace.spans)} spans on {len(trace.devices)} device(s) written to {out} "
          f"(open in ui.perfetto.dev, or: edge-runtime trace show {out} --png timeline.png)",
          file=sys.stderr)


def tracing_for(deployment: Any, path: Path | None) -> Any:
    """`deployment.tracing()` when --trace asks for it (a context manager yielding the
    capture), else a no-op one yielding None."""
    if path is None:
        return contextlib.nullcontext()
    if not hasattr(deployment, "tracing"):
        print(f"--trace: a {type(deployment).__name__} is not traced yet; use --strategy "
              "tensor", file=sys.stderr)
        return contextlib.nullcontext()
    return deployment.tracing()


def write_capture(capture: Any, path: Path | None) -> None:
    """Write what a `tracing_for` block captured (nothing if it captured nothing)."""
    trace = getattr(capture, "trace", None)
    if path is not None and trace is not None:
        write_trace(trace, path)


def run(args: argparse.Namespace) -> int:
    from edge_runtime.trace.chrome import load
    from edge_runtime.trace.render import render_png, summary

    trace = load(args.file)
    span = (trace.end - trace.start) * 1e3
    print(f"{args.file}: {len(trace.spans)} spans over {span:.1f} ms on "
          f"{len(trace.devices)} device(s)" + (f"; {trace.dropped} spans were overwritten "
                                              "before they were fetched" if trace.dropped else ""))
    for key in ("command", "machine", "date"):
        if key in trace.meta:
            print(f"  {key}: {trace.meta[key]}")
    rows = summary(trace)
    if rows:
        width = max(len(f"{d} {lane}") for d, lane, _, _ in rows)
        print(f"  {'device activity':<{width}}  spans   busy ms  share")
        for device, lane, count, busy in rows:
            share = busy / span if span > 0 else 0.0
            print(f"  {device + ' ' + lane:<{width}}  {count:>5}  {busy:>8.2f}  {share:>5.0%}")
    for device, sample in trace.offsets.items():
        print(f"  clock {device}: {sample.offset_s * 1e3:+.3f} ms ± {sample.error_s * 1e3:.3f}")
    if args.png is not None:
        out = render_png(trace, args.png, title=args.title)
        print(f"timeline written to {out}")
    return 0
