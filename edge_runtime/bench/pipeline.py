"""`edge-runtime bench pipeline`: agent overhead, pipelined throughput, early-exit speed-up.

Three measurements, each side by side in one run (alternating the two things
compared, so a busy machine slows both alike), reported as medians and ratios:

1. overhead: a single-stage deployment on one agent vs plain
   `onnxruntime.InferenceSession.run` on the same ~10 ms model (target ≤ 1.10×);
2. throughput: the same model cut into N equal-FLOP stages on N agents with
   `run_many` vs the whole model on one agent with `run_many`, with
   `--security curve,insecure` on a CURVE and an insecure cluster side by side
   (`pipeline_throughput.py`; target ≥ 0.9× secure ÷ insecure);
3. early exit: the digits model on emulated devices with calibrated exit
   thresholds vs always running to the last exit: mean latency and accuracy
   (target ≥ 2× lower mean latency at ≤ 1 point accuracy loss).

Agents for 1 and 2 are started here as `edge-runtime agent` processes with
`--threads` (and pinned one core each with `--pin` when the machine has the
cores), with CURVE keys made for the run, then joined with `er.connect`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.bench.pinning import first_spare_core
from edge_runtime.bench.pipeline_agents import (
    alternate,
    caller,
    median_ms,
    print_table,
    started_agents,
)
from edge_runtime.bench.pipeline_throughput import measure_throughput

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--requests", type=int, default=200, help="timed requests per variant")
    parser.add_argument("--warmup", type=int, default=20, help="untimed requests first")
    parser.add_argument("--layers", type=int, default=16, help="MatMul+ReLU layers (~10 ms)")
    parser.add_argument("--rows", type=int, default=64, help="rows of the input matrix")
    parser.add_argument("--width", type=int, default=512, help="width of each layer")
    parser.add_argument("--agents", type=int, default=3, help="stages/agents in part 2")
    parser.add_argument("--threads", type=int, default=1, help="threads per agent and baseline")
    parser.add_argument(
        "--pin", action="store_true", help="pin each agent to its own core (taskset)"
    )
    parser.add_argument(
        "--insecure", action="store_true", help="part 2 without CURVE (to see what it costs)"
    )
    parser.add_argument("--security", default=None,
                        help="part 2's security modes side by side, e.g. curve,insecure "
                        "(default: curve, or insecure with --insecure); prints secure ÷ "
                        "insecure throughput")
    parser.add_argument(
        "--parts", default="overhead,throughput,exits", help="which parts to run (comma list)"
    )


# --- the ~10 ms model ----------------------------------------------------------


def build_matmul_model(path: Path, layers: int, rows: int, width: int, seed: int = 0) -> Path:
    """A stack of `layers` MatMul+ReLU of [rows, width] x [width, width]: compute-bound,
    ~2·rows·width² FLOPs per layer, cuttable between any two layers."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, weights = [], []
    previous = "x"
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        weights.append(numpy_helper.from_array(w, f"w{i}"))
        out = "y" if i == layers - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [previous, f"w{i}"], [f"m{i}"], name=f"matmul{i}"))
        nodes.append(helper.make_node("Relu", [f"m{i}"], [out], name=f"relu{i}"))
        previous = out
    graph = helper.make_graph(
        nodes,
        "matmul_stack",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, width])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


# --- the three parts --------------------------------------------------------------


@contextlib.contextmanager
def pinned_here(core: int | None) -> Iterator[None]:
    """Run this thread (the SDK and the plain onnxruntime baseline) on `core` meanwhile:
    with `--pin` each agent has a core of its own, and so must what they are compared
    with, or the baseline migrates between cores (and caches) while the agents do not."""
    if core is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def measure_overhead(args: argparse.Namespace, model: Path, workdir: Path) -> dict[str, Any]:
    """Part 1: one agent, single stage, vs onnxruntime in this process (same threads)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((args.rows, args.width)).astype(np.float32)
    compute: list[float] = []
    cores = sorted(os.sched_getaffinity(0))
    first = first_spare_core(3)  # two agents and the baseline
    with (
        started_agents(1, args.threads, args.pin, workdir / "curve", first_core=first) as cluster,
        started_agents(1, args.threads, args.pin, workdir / "plain", insecure=True,
                       first_core=first + 1) as bare,
        pinned_here(cores[first + 2] if args.pin and len(cores) >= 3 else None),
    ):
        deployment = cluster.deploy(model, strategy="single")
        unencrypted = bare.deploy(model, strategy="single")
        want = session.run(None, {"x": x})[0]
        error = float(np.abs(deployment.run({"x": x})["y"] - want).max())

        def on_agent() -> None:
            compute.append(deployment.run({"x": x}).compute_s)

        times = alternate(
            {
                "onnxruntime": lambda: session.run(None, {"x": x}),
                "agent": on_agent,
                "insecure": caller(unencrypted, {"x": x}),
            },
            args.requests,
            args.warmup,
        )
    plain, agent = median_ms(times["onnxruntime"]), median_ms(times["agent"])
    insecure = median_ms(times["insecure"])
    agent_compute = float(np.median(compute[args.warmup :]) * 1e3)
    where = (f"; pinned: agents on cores {cores[first]} and {cores[first + 1]}, baseline and "
             f"SDK on core {cores[first + 2]}" if args.pin and len(cores) >= 3 else "")
    print_table(
        f"1. overhead: one agent vs plain onnxruntime ({args.requests} alternating requests, "
        f"{args.threads} thread(s){where})",
        ["variant", "median ms", "ratio"],
        [
            ["onnxruntime.InferenceSession.run", f"{plain:.3f}", "1.00×"],
            ["agent, CURVE: deployment.run", f"{agent:.3f}", f"{agent / plain:.3f}×"],
            ["agent, --insecure: deployment.run", f"{insecure:.3f}", f"{insecure / plain:.3f}×"],
            [
                "agent, CURVE: its compute alone",
                f"{agent_compute:.3f}",
                f"{agent_compute / plain:.3f}×",
            ],
        ],
    )
    return {"onnxruntime_median_ms": plain, "agent_median_ms": agent,
            "insecure_agent_median_ms": insecure, "insecure_ratio": insecure / plain,
            "agent_compute_median_ms": agent_compute, "ratio": agent / plain,
            "overhead_ms": agent - plain, "max_abs_error": error}  # fmt: skip


def measure_exits(args: argparse.Namespace) -> dict[str, Any]:
    """Part 3: the digits pipeline on emulated devices, calibrated exits vs always to the end."""
    import edge_runtime as er
    from edge_runtime.demo.assets import CALIBRATION_FILE, MODEL_FILE, TEST_FILE, find_assets
    from edge_runtime.demo.assets import load_split as load
    from edge_runtime.demo.digits import TOLERANCE, predicted_class
    from edge_runtime.demo.stats import accuracy
    from edge_runtime.demo.steps import DEFAULT_PRESETS
    from partitioner.exits import apply_calibration, calibrate_exits, exit_latencies

    assets = find_assets()
    calibration, test = load(assets / CALIBRATION_FILE), load(assets / TEST_FILE)
    presets = list(DEFAULT_PRESETS)  # the demo's devices
    with er.local_cluster(len(presets), presets=presets, log_level="WARNING") as cluster:
        always = cluster.deploy(assets / MODEL_FILE, strategy="pipeline")
        outputs = always.run({"image": calibration.images}).outputs
        chosen = calibrate_exits([outputs[e.output] for e in always.plan.exits],
                                 calibration.labels, exit_latencies(always.plan),
                                 tolerance=TOLERANCE)  # fmt: skip
        early = cluster.deploy(assets / MODEL_FILE, plan=apply_calibration(always.plan, chosen))
        variants = {"calibrated exits": early, "always the last exit": always}
        results: dict[str, list[Any]] = {name: [] for name in variants}
        for i in range(len(test)):
            for name, deployment in variants.items():
                results[name].append(deployment.run({"image": test.images[i : i + 1]}))
    summary: dict[str, Any] = {"thresholds": list(chosen.chosen.thresholds), "images": len(test)}
    rows = []
    for name, deployment in variants.items():
        predictions = np.array([predicted_class(r, deployment.plan) for r in results[name]])
        latencies = [r.latency_s for r in results[name]]
        summary[name] = {"accuracy": accuracy(predictions, test.labels),
                         "mean_ms": float(np.mean(latencies) * 1e3),
                         "p50_ms": median_ms(latencies)}  # fmt: skip
    a, b = summary["calibrated exits"], summary["always the last exit"]
    summary["mean_latency_speedup"] = b["mean_ms"] / a["mean_ms"]
    summary["accuracy_change_points"] = (a["accuracy"] - b["accuracy"]) * 100
    for name in variants:
        row = summary[name]
        rows.append([name, f"{row['mean_ms']:.2f}", f"{row['p50_ms']:.2f}",
                     f"{row['accuracy'] * 100:.2f}%"])  # fmt: skip
    print_table(
        f"3. early exit: digits on {', '.join(presets)} (emulated), {len(test)} test images "
        f"alternating; mean latency {summary['mean_latency_speedup']:.2f}× lower, accuracy "
        f"{summary['accuracy_change_points']:+.2f} points",
        ["variant", "mean ms", "p50 ms", "accuracy"],
        rows,
    )
    return summary


def run(args: argparse.Namespace) -> dict[str, Any]:
    from edge_runtime.errors import ConfigError

    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    unknown = parts - {"overhead", "throughput", "exits"}
    if unknown or args.requests < 5 or args.agents < 2 or args.threads < 1:
        raise ConfigError(
            f"bad options: parts {sorted(unknown) or 'ok'}, --requests ≥ 5, --agents ≥ 2, "
            "--threads ≥ 1"
        )
    results: dict[str, Any] = {"command": " ".join(sys.argv), "options": vars(args).copy()}
    results["options"].pop("_module", None)
    results["options"]["out"] = str(args.out)
    with tempfile.TemporaryDirectory(prefix="edge-runtime-bench-") as tmp:
        workdir = Path(tmp)
        model = build_matmul_model(workdir / "matmul.onnx", args.layers, args.rows, args.width)
        print(f"model: {args.layers} × MatMul[{args.rows}×{args.width}]·[{args.width}×"
              f"{args.width}] + ReLU, {model.stat().st_size / 1e6:.1f} MB")  # fmt: skip
        if "overhead" in parts:
            results["overhead"] = measure_overhead(args, model, workdir / "overhead")
        if "throughput" in parts:
            results["throughput"] = measure_throughput(args, model, workdir / "throughput")
    if "exits" in parts:
        results["exits"] = measure_exits(args)
    return results
