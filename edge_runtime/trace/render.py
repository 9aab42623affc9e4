"""A timeline picture of a `Trace`: one lane per device and activity (matplotlib).

Why a picture: whether the window's disk reads overlap compute, and where a pipeline
leaves a device idle (its bubbles), is seen at a glance on aligned lanes and hard to
read from numbers. matplotlib is the optional `plots` extra; without it the caller gets
a `ConfigError` saying what to install.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from edge_runtime.errors import ConfigError
from edge_runtime.trace.model import Trace

COLORS = {
    "request": "#9e9e9e", "queue": "#fdd835", "receive": "#4fc3f7", "send": "#0288d1",
    "compute": "#43a047", "allreduce": "#e53935", "window": "#fb8c00", "disk": "#8e24aa",
}
"""One colour per activity, the same in every picture."""
ROW_HEIGHT_IN = 0.32
MIN_WIDTH_FRACTION = 0.0015
"""Spans shorter than this fraction of the trace are drawn this wide, so they show."""


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend; ConfigError naming the extra when absent."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("drawing plots needs matplotlib: pip install edge-runtime[plots]"
                          ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def render_png(trace: Trace, path: str | Path, *, title: str | None = None,
               width_in: float = 12.0) -> Path:
    """Draw `trace` as a timeline PNG at `path` (ms from its first span); returns the path."""
    if not trace.spans:
        raise ConfigError("the trace holds no spans; trace a request first (--trace FILE)")
    plt = pyplot()
    lanes = trace.lanes()
    row = {pair: i for i, pair in enumerate(lanes)}
    epoch, total = trace.start, max(trace.end - trace.start, 1e-9)
    min_w = total * MIN_WIDTH_FRACTION * 1e3
    fig, ax = plt.subplots(figsize=(width_in, 1.4 + ROW_HEIGHT_IN * len(lanes)))
    for lane_key in lanes:
        device, lane = lane_key
        bars = [((s.start - epoch) * 1e3, max(s.duration_s * 1e3, min_w))
                for s in trace.on(device, lane)]
        ax.broken_barh(bars, (row[lane_key] - 0.4, 0.8), facecolors=COLORS.get(lane, "#607d8b"),
                       edgecolors="none")
    ax.set_yticks(range(len(lanes)))
    ax.set_yticklabels([f"{d} · {lane}" for d, lane in lanes], fontsize=8)
    ax.invert_yaxis()
    for i in range(1, len(lanes)):  # a thin rule between devices
        if lanes[i][0] != lanes[i - 1][0]:
            ax.axhline(i - 0.5, color="#bdbdbd", linewidth=0.6)
    ax.set_xlabel("ms since the first span")
    ax.set_xlim(0, total * 1e3 * 1.01)
    ax.grid(axis="x", color="#eeeeee", linewidth=0.6)
    ax.set_axisbelow(True)
    heading = title or trace.meta.get("title") or "edge-runtime trace"
    sub = " · ".join(v for k in ("command", "machine", "date") if (v := trace.meta.get(k)))
    lines = textwrap.wrap(sub, width=int(width_in * 16)) if sub else []
    ax.set_title("\n".join([heading, *lines]), fontsize=8, loc="left")
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLORS[lane])
               for lane in COLORS if any(lane == x for _, x in lanes)]
    names = [lane for lane in COLORS if any(lane == x for _, x in lanes)]
    ax.legend(handles, names, loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.4 / len(lanes)),
              ncol=len(names), fontsize=8, frameon=False)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def summary(trace: Trace) -> list[tuple[str, str, int, float]]:
    """(device, lane, spans, busy ms) for each lane, in the timeline's order."""
    return [(d, lane, len(trace.on(d, lane)), trace.busy_s(d, lane) * 1e3)
            for d, lane in trace.lanes()]


__all__ = ["COLORS", "pyplot", "render_png", "summary"]
