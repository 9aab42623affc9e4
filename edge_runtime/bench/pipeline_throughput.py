"""Part 2 of `edge-runtime bench pipeline`: pipelined `run_many` throughput, per security.

N equal-FLOP stages on N agents vs the whole model on one agent, both with `run_many`.
With `--security curve,insecure` the same runs on two clusters started side by side (a
CURVE one and an `--insecure` one, on their own cores when pinned); blocks of every
variant alternate, so a busy machine slows all alike, and the secure pipeline's
throughput is printed as a ratio to the insecure one's (target ≥ 0.9×).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.bench.pinning import first_spare_core
from edge_runtime.bench.pipeline_agents import (
    alternate,
    caller,
    equal_flop_cuts,
    median_ms,
    print_table,
    started_agents,
)

MODES = ("curve", "insecure")
BLOCKS = 5  # alternating blocks of `run_many` per variant


def modes(args: argparse.Namespace) -> list[str]:
    """`--security` as a list of modes (default: curve, or insecure with --insecure)."""
    text = getattr(args, "security", None) or ("insecure" if args.insecure else "curve")
    out = list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    bad = [m for m in out if m not in MODES]
    if bad or not out:
        raise SystemExit(f"--security: {bad or text!r}; use curve and/or insecure")
    return out


def measure_throughput(args: argparse.Namespace, model: Path, workdir: Path) -> dict[str, Any]:
    """N equal-FLOP stages on N agents vs the whole model on one, both with run_many, on a
    cluster per security mode."""
    from partitioner.graph import ModelGraph
    from partitioner.pipeline import plan_cuts

    chosen = modes(args)
    x = np.random.default_rng(2).standard_normal((args.rows, args.width)).astype(np.float32)
    graph = ModelGraph.from_onnx(model)
    cuts = equal_flop_cuts(graph, args.agents)
    variants: dict[str, Any] = {}
    stage_devices: list[str] = []
    # or the first mode's first stage alone would run on the interrupts' core
    skip = first_spare_core(len(chosen) * args.agents * args.threads)
    with contextlib.ExitStack() as stack:
        for index, mode in enumerate(chosen):
            cluster = stack.enter_context(started_agents(
                args.agents, args.threads, args.pin, workdir / mode, mode == "insecure",
                first_core=skip + index * args.agents))
            plan = plan_cuts(graph, [a.profile for a in cluster.agents], cuts, cluster.links())
            stage_devices = [s.device for s in plan.stages]
            suffix = f", {mode}" if len(chosen) > 1 else ""
            variants[f"{len(plan.stages)} stages on {args.agents} agents{suffix}"] = \
                cluster.deploy(model, plan=plan)
            variants[f"whole model on 1 agent{suffix}"] = cluster.deploy(
                model, strategy="single", devices=[cluster.agents[0].name])
        block = max(10, args.requests // 5)
        rates: dict[str, list[float]] = {name: [] for name in variants}
        for deployment in variants.values():  # warm-up
            for _ in deployment.run_many([{"x": x}] * args.warmup):
                pass
        for _ in range(BLOCKS):
            for name, deployment in variants.items():
                started = time.perf_counter()
                for _ in deployment.run_many([{"x": x}] * block):
                    pass
                rates[name].append(block / (time.perf_counter() - started))
        latency = alternate({name: caller(d, {"x": x}) for name, d in variants.items()},
                            max(10, args.requests // 5), 0)
    names = list(variants)
    medians = {name: float(np.median(r)) for name, r in rates.items()}
    rows = []
    for i in range(0, len(names), 2):  # per mode: the pipeline ÷ the whole model on one
        pipeline, single = names[i], names[i + 1]
        for name in (pipeline, single):
            rows.append([name, f"{medians[name]:.1f}", f"{medians[name] / medians[single]:.2f}×",
                         f"{median_ms(latency[name]):.2f}"])
    print_table(
        f"2. throughput: run_many (8 in flight), {BLOCKS} alternating blocks of {block}; "
        f"{args.threads} thread(s) per agent{', pinned' if args.pin else ''}; "
        f"security {', '.join(chosen)}",
        ["variant", "requests/s", "÷ 1 agent", "latency p50 ms"], rows)
    result: dict[str, Any] = {
        "cuts": cuts, "stage_devices": stage_devices, "requests_per_s": medians,
        "ratio": medians[names[0]] / medians[names[1]],
        "latency_p50_ms": {n: median_ms(latency[n]) for n in names},
        "cpu_count": os.cpu_count(), "threads_per_agent": args.threads, "pinned": args.pin,
        "curve": chosen[0] == "curve", "security": chosen}
    if chosen == ["curve", "insecure"]:
        secure = medians[names[0]] / medians[names[2]]
        result["secure_over_insecure"] = secure
        print(f"\npipeline throughput, security on ÷ off (same run, blocks alternating): "
              f"{secure:.2f}× (target ≥ 0.9×)")
    return result


__all__ = ["MODES", "measure_throughput", "modes"]
