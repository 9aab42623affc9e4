"""The demo's optional trace step (`edge-runtime demo --trace FILE`).

Why a step of its own: the other steps measure; this one shows where the time of a few
pipelined requests went on each device (queues, compute, frames in flight, the
bubbles between stages), writes the Chrome trace JSON, and a timeline PNG beside it
when matplotlib (the `plots` extra) is installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge_runtime.demo.assets import TEST_FILE, find_assets, load_split
from edge_runtime.demo.steps import DemoContext, StepFailed

TRACED_REQUESTS = 8
"""Test images sent for the trace, at most `IN_FLIGHT` at once."""
IN_FLIGHT = 4


@dataclass
class TraceRequests:
    """Trace a burst of pipelined requests on every device and save the trace."""

    path: Path
    title: str = "Trace a burst of requests"

    def run(self, ctx: DemoContext) -> None:
        from edge_runtime.errors import ConfigError
        from edge_runtime.trace.chrome import save
        from edge_runtime.trace.render import render_png

        model = ctx.state.get("deployment")
        if model is None:
            raise StepFailed("no deployment: the plan step must run first")
        split = load_split(find_assets(ctx.options.assets) / TEST_FILE).head(TRACED_REQUESTS)
        feeds = [{"image": split.images[i:i + 1]} for i in range(len(split))]
        with model.tracing() as capture:
            for _ in model.run_many(feeds, max_in_flight=IN_FLIGHT):
                pass
        trace = capture.trace
        assert trace is not None  # set when the block ends
        trace = trace.with_meta(title=f"{len(feeds)} digits requests, {IN_FLIGHT} in flight")
        out = save(trace, self.path)
        ctx.console.ok(f"{len(trace.spans)} spans on {len(trace.devices)} devices written to "
                       f"{out} (open it in ui.perfetto.dev)")
        picture = out.with_suffix(".png")
        try:
            render_png(trace, picture)
        except ConfigError as error:  # matplotlib missing: the JSON is still there
            ctx.console.note(str(error))
        else:
            ctx.console.ok(f"timeline picture: {picture}")
        ctx.results["trace"] = {"path": str(out), "spans": len(trace.spans),
                                "devices": list(trace.devices)}


__all__ = ["TraceRequests"]
