"""Measuring a share while it serves: the step's compute/comm split and the agent's RSS.

Why here and not in the worker: compute is dilated on emulated devices before each
sync point, so the split must be taken around the collectives the agent injects;
and the peak RSS a benchmark reports must be the serving peak, reset after loading.
"""

from __future__ import annotations

import contextlib
import resource
import time

from edge_runtime.agent.deployments import AgentContext


def rss_bytes() -> tuple[int, int]:
    """(current, peak) resident set size of this process; peak since `reset_peak_rss`."""
    current = peak = 0
    with contextlib.suppress(OSError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                current = int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) * 1024
    if peak == 0:  # not Linux: ru_maxrss (KiB on Linux, bytes on macOS) is the lifetime peak
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return current, peak


def reset_peak_rss() -> None:
    """Start the peak-RSS count afresh (Linux `clear_refs` 5), so the peak a benchmark
    reports is the serving peak, not the conversion's transient one."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


class StepClock:
    """Splits a step's wall time into compute (dilated on emulated devices) and comm."""

    def __init__(self, ctx: AgentContext) -> None:
        self._ctx = ctx
        self.compute_s = 0.0
        self.comm_s = 0.0
        self._mark = time.perf_counter()

    def sync(self) -> None:
        """Called before each collective: dilate the compute since the last one."""
        busy = time.perf_counter() - self._mark
        self._ctx.dilate(busy)
        now = time.perf_counter()
        self.compute_s += now - self._mark
        self._mark = now

    def synced(self) -> None:
        now = time.perf_counter()
        self.comm_s += now - self._mark
        self._mark = now


__all__ = ["StepClock", "reset_peak_rss", "rss_bytes"]
