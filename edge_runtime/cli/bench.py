"""`edge-runtime bench SUITE`: run one benchmark suite, print a table, write JSON.

Each suite is a module `edge_runtime.bench.<suite>` exposing `add_arguments(parser)`
and `run(args) -> dict` (the JSON-serialisable results; the suite prints its own
table as it goes). Benchmarks are not tests: they measure, they do not assert.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import time
from pathlib import Path

SUITES: dict[str, str] = {
    "allreduce": "collectives vs the bare ZeroMQ round trip and torch.distributed gloo",
    "plan": "planning time and predicted vs measured stage latency",
    "pipeline": "agent overhead, pipelined throughput, early-exit speed-up",
    "llm": "tensor-parallel decoding with and without a sliding layer window",
    "kernels": "a 4-bit share's decode step: fused layer segments vs one kernel per matrix",
    "faults": "agent loss: detection, failover, throughput, nothing lost or answered twice",
    "serve": "continuous batching: tokens/s, ms/token and TTFT at 1-8 concurrent streams",
    "all": "every suite with short settings: a markdown report with plots (--report DIR)",
}
MODULES: dict[str, str] = {"all": "report"}
"""Suites whose module is not named after them (`edge_runtime.bench.<module>`)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="suite", metavar="SUITE", required=True)
    for name, help_text in SUITES.items():
        if importlib.util.find_spec(f"edge_runtime.bench.{MODULES.get(name, name)}") is None:
            continue  # a suite whose module is not part of this build
        suite_parser = sub.add_parser(name, help=help_text, description=help_text)
        suite_parser.add_argument(
            "--out",
            type=Path,
            default=None,
            help="where to write the JSON results (default: bench-results/<suite>-<time>.json)",
        )
        module = importlib.import_module(f"edge_runtime.bench.{MODULES.get(name, name)}")
        module.add_arguments(suite_parser)
        if name == "llm":  # --peer-dllama DIR: distributed-llama in the same rounds
            from edge_runtime.bench import peer_dllama

            peer_dllama.add_arguments(suite_parser)


def run(args: argparse.Namespace) -> int:
    module = importlib.import_module(f"edge_runtime.bench.{MODULES.get(args.suite, args.suite)}")
    results = module.run(args)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out: Path = args.out or Path("bench-results") / f"{args.suite}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, sort_keys=True))
    print(f"\nresults written to {out}")
    return 0
