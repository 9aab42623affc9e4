"""Demo steps around the cluster itself: start the emulated devices, show them, sum up.

Only the public SDK is used (`edge_runtime.local_cluster`, `Cluster.agents`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence

from edge_runtime.demo.render import Column, fmt_bytes
from edge_runtime.demo.steps import DemoContext

log = logging.getLogger(__name__)


def agent_names(presets: Sequence[str]) -> list[str]:
    """Agents named after the device they emulate; a repeated preset gets `-2`, `-3`..."""
    names: list[str] = []
    for preset in presets:
        name, count = preset, 1
        while name in names:
            count += 1
            name = f"{preset}-{count}"
        names.append(name)
    return names


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Hide one logger's warnings at the default log level (the demo shows their content)."""
    logger = logging.getLogger(logger_name)
    if logging.getLogger().getEffectiveLevel() < logging.WARNING:
        yield  # the user asked for detail: keep everything
        return
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)


class StartCluster:
    title = "Start a local cluster"

    def run(self, ctx: DemoContext) -> None:
        import edge_runtime as er

        presets = list(ctx.options.presets)
        with (
            ctx.console.progress(f"starting {len(presets)} agent processes") as line,
            _quiet("devices.caps"),  # "preset faster than this host": the table shows it
        ):
            ctx.cluster = ctx.exit_stack.enter_context(
                er.local_cluster(
                    len(presets), presets=presets, names=agent_names(presets), log_level="WARNING"
                )
            )
            line.done(f"started {len(presets)} agents on 127.0.0.1 (ZeroMQ, CURVE-encrypted)")
        ctx.console.note("each agent is a real process, capped to its device's threads, memory")
        ctx.console.note("and speed; they talk over ZeroMQ as they would over a real network")


class ShowDevices:
    title = "Devices"

    def run(self, ctx: DemoContext) -> None:
        from devices import presets as device_presets

        rows = []
        devices = []
        capped: list[str] = []
        for info in ctx.cluster.agents:
            prof = info.profile
            nominal = prof.gflops_fp32
            if info.preset:
                nominal = device_presets.get(info.preset).gflops_fp32
                if nominal > prof.gflops_fp32 * 1.05:
                    capped.append(info.name)
            rows.append(
                [
                    info.name,
                    str(prof.cores),
                    f"{nominal:.0f}",
                    f"{prof.gflops_fp32:.0f}",
                    fmt_bytes(info.memory_budget or prof.mem_total_bytes),
                    f"{prof.mem_bandwidth_gbps:.0f} GB/s",
                    " ".join(b.lstrip(".") for b in info.backends),
                ]
            )
            devices.append(
                {
                    "name": info.name,
                    "preset": info.preset,
                    "label": info.label,
                    "gflops_fp32": prof.gflops_fp32,
                    "cores": prof.cores,
                }
            )
        ctx.console.table(
            [
                Column("device"),
                Column("cores", ">"),
                Column("GFLOPS", ">"),
                Column("runs at", ">"),
                Column("memory", ">"),
                Column("mem. bw", ">"),
                Column("models"),
            ],
            rows,
        )
        ctx.console.note(
            "GFLOPS: the real device (fp32); runs at: what the emulated agent measures"
        )
        ctx.console.note("and the planner uses — slower devices are slowed down to scale.")
        if capped:
            ctx.console.note(
                f"{' and '.join(capped)} would outrun this machine's share of its cores,"
            )
            ctx.console.note("so they run at this machine's speed.")
        ctx.results["devices"] = devices


class Summary:
    title = "Summary"

    def run(self, ctx: DemoContext) -> None:
        width = max((len(key) for key, _ in ctx.summary), default=0)
        for key, value in ctx.summary:
            ctx.console.ok(f"{key:<{width}}  {value}")
        ctx.console.write()
        ctx.console.note("next: run your own model with")
        ctx.console.note("  edge-runtime run MODEL.onnx --local 3 --input NAME=FILE.npy")
        ctx.console.note("or start `edge-runtime agent` on your devices and use --connect")


__all__ = ["ShowDevices", "StartCluster", "Summary", "agent_names"]
