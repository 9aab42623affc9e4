"""The demo as a sequence of steps sharing one context.

Each step is a small object with a `title` and `run(ctx)`; `run_steps` numbers
them as report sections, times them, and turns a failure into one clear line
instead of a traceback. Adding a step (e.g. text generation with a tiny LLM) is
writing one class and inserting it in `default_steps` — nothing else changes.
Steps hand live objects to later ones through `ctx.state`, record numbers in
`ctx.results` (the JSON report) and put their headline lines in `ctx.summary`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from edge_runtime.demo.render import Console
from edge_runtime.errors import is_user_error

log = logging.getLogger(__name__)

DEFAULT_PRESETS = ("raspberry-pi-4", "jetson-orin-nano", "phone")


@dataclass(frozen=True)
class DemoOptions:
    """What `edge-runtime demo` was asked to do; the defaults are the README's demo."""

    presets: tuple[str, ...] = DEFAULT_PRESETS
    assets: Path | None = None  # folder with digits_exits.onnx, test_split.npz, calibration.npz
    limit: int | None = None  # classify only the first N test images
    baseline_limit: int = 120  # images run on the single-device baseline
    strategy: str = "pipeline"
    report_json: Path | None = None


@dataclass
class DemoContext:
    """State the steps share: the console, the cluster once started, results so far."""

    console: Console
    options: DemoOptions
    cluster: Any = None
    results: dict[str, Any] = field(default_factory=dict)  # JSON-serialisable report
    state: dict[str, Any] = field(default_factory=dict)  # live objects (deployments, stats)
    summary: list[tuple[str, str]] = field(default_factory=list)
    exit_stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)


class Step(Protocol):
    """One section of the demo."""

    title: str

    def run(self, ctx: DemoContext) -> None: ...


class StepFailed(Exception):
    """A step could not finish; the message says what to do (no traceback is shown)."""


def run_steps(steps: Sequence[Step], ctx: DemoContext) -> int:
    """Run `steps` in order as numbered sections; 0 on success, 1 after a failure.

    Resources a step opens (the cluster) go on `ctx.exit_stack` and are closed
    here whatever happens, so a failed demo leaves no agent processes behind.
    """
    console = ctx.console
    started = time.perf_counter()
    with ctx.exit_stack:
        for number, step in enumerate(steps, start=1):
            console.section(number, step.title)
            step_started = time.perf_counter()
            try:
                step.run(ctx)
            except KeyboardInterrupt:
                console.fail("interrupted")
                return 130
            except Exception as error:
                if not (isinstance(error, StepFailed) or is_user_error(error)):
                    log.debug("demo step %r failed", step.title, exc_info=True)
                console.write()
                console.fail(f"{step.title} failed: {error}")
                if not (isinstance(error, StepFailed) or is_user_error(error)):
                    console.note("run with --log-level DEBUG for the full traceback")
                return 1
            ctx.results.setdefault("step_seconds", {})[step.title] = round(
                time.perf_counter() - step_started, 3
            )
        ctx.results["total_seconds"] = round(time.perf_counter() - started, 3)
    return 0


__all__ = [
    "DEFAULT_PRESETS",
    "DemoContext",
    "DemoOptions",
    "Step",
    "StepFailed",
    "run_steps",
]
