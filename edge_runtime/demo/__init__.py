"""`edge-runtime demo`: the README's first command, as a sequence of report steps.

`run_demo(options)` runs `default_steps()` (start a local cluster of emulated
devices, show them, plan the multi-exit digits model and calibrate its exits,
classify the test split, compare latency with one device, measure throughput,
summarise) and returns the exit code. `steps` holds the step protocol and runner,
`render` the text formatting, `stats` the pure summaries.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from typing import TextIO

from edge_runtime.demo.cluster_steps import ShowDevices, StartCluster, Summary
from edge_runtime.demo.digits import ClassifyTestSplit, CompareLatency, PlanAndDeploy, Throughput
from edge_runtime.demo.generation import GenerateText
from edge_runtime.demo.render import Column, Console
from edge_runtime.demo.stats import LatencyStats, accuracy, exit_counts
from edge_runtime.demo.steps import (
    DEFAULT_PRESETS,
    DemoContext,
    DemoOptions,
    Step,
    StepFailed,
    run_steps,
)

log = logging.getLogger(__name__)

TITLE = "edge-runtime demo"
SUBTITLE = "three emulated edge devices run one neural network together"


def default_steps() -> list[Step]:
    """The README demo, in order. A new step (e.g. text generation) goes before `Summary`."""
    return [
        StartCluster(),
        ShowDevices(),
        PlanAndDeploy(),
        ClassifyTestSplit(),
        CompareLatency(),
        Throughput(),
        GenerateText(),
        Summary(),
    ]


def run_demo(
    options: DemoOptions | None = None,
    steps: Sequence[Step] | None = None,
    stream: TextIO | None = None,
) -> int:
    """Run the demo and print its report; returns the process exit code."""
    options = options or DemoOptions()
    console = Console(stream if stream is not None else sys.stdout)
    console.title(TITLE, SUBTITLE)
    ctx = DemoContext(console=console, options=options)
    code = run_steps(list(steps) if steps is not None else default_steps(), ctx)
    if code == 0:
        console.write()
        console.ok(console.style(f"demo finished in {ctx.results['total_seconds']:.1f} s", "bold"))
    if options.report_json is not None:
        ctx.results["exit_code"] = code
        options.report_json.parent.mkdir(parents=True, exist_ok=True)
        options.report_json.write_text(json.dumps(ctx.results, indent=2, sort_keys=True) + "\n")
    return code


__all__ = [
    "DEFAULT_PRESETS",
    "Column",
    "Console",
    "DemoContext",
    "DemoOptions",
    "LatencyStats",
    "Step",
    "StepFailed",
    "accuracy",
    "default_steps",
    "exit_counts",
    "run_demo",
    "run_steps",
]
