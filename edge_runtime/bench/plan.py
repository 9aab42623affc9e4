"""`edge-runtime bench plan`: planning time, and predicted vs measured stage latency.

Part 1 — planning time: synthetic ONNX models of about 50, 500 and 2,000 nodes
(MatMul/Add/Relu blocks with skip connections) planned over 2, 4 and 8 preset
devices, both objectives; reports graph analysis time and DP time (median of runs).

Part 2 — cost model check: this machine is profiled the way `devices` does it
(single-thread onnxruntime matmul GFLOPS, memory bandwidth); two models (the digits
asset and a residual CNN built here) are cut into stages, each shard is timed in
onnxruntime with one thread, and the measured median is compared with the planner's
prediction (ratio measured / predicted, per stage and overall). It then fits the
cost model's efficiencies to the measurements (least squares over op classes) and
reports the error ratios of the fitted model, side by side with the defaults.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

DIGITS = Path(__file__).resolve().parents[2] / "examples" / "digits" / "digits_exits.onnx"
PRESET_CYCLE = (
    "raspberry-pi-4",
    "jetson-orin-nano",
    "phone",
    "laptop",
    "raspberry-pi-5",
    "jetson-nano",
    "cloud-vm",
    "raspberry-pi-4",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sizes", default="50,500,2000", help="node counts of the synthetic models"
    )
    parser.add_argument("--devices", default="2,4,8", help="device counts to plan over")
    parser.add_argument("--repeats", type=int, default=3, help="planning runs per cell (median)")
    parser.add_argument("--runs", type=int, default=200, help="timed shard runs per stage (median)")
    parser.add_argument("--stages", type=int, default=4, help="stages per model in part 2")
    parser.add_argument("--skip-planning", action="store_true", help="only part 2")
    parser.add_argument("--skip-latency", action="store_true", help="only part 1")


def synthetic_model(path: Path, nodes: int, width: int = 64, seed: int = 0) -> Path:
    """About `nodes` nodes: blocks of MatMul, Add, Relu; every 4th block adds a skip."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    graph_nodes: list[Any] = []
    inits: list[Any] = []
    prev, skip, block = "x", "x", 0
    while len(graph_nodes) < nodes - 1:
        w, b = f"w{block}", f"b{block}"
        inits += [
            numpy_helper.from_array(
                (rng.standard_normal((width, width)) * 0.1).astype(np.float32), w
            ),
            numpy_helper.from_array(np.zeros(width, np.float32), b),
        ]
        graph_nodes += [
            helper.make_node("MatMul", [prev, w], [f"m{block}"]),
            helper.make_node("Add", [f"m{block}", b], [f"a{block}"]),
            helper.make_node("Relu", [f"a{block}"], [f"r{block}"]),
        ]
        prev = f"r{block}"
        if block % 4 == 3:
            graph_nodes.append(helper.make_node("Add", [prev, skip], [f"s{block}"]))
            prev = skip = f"s{block}"
        block += 1
    graph_nodes.append(helper.make_node("Identity", [prev], ["y"]))
    graph = helper.make_graph(
        graph_nodes,
        f"synthetic{nodes}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path


def residual_cnn(path: Path, seed: int = 0) -> Path:
    """A ResNet-like CNN (16 convs, skips every two) for the latency check."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def weight(name: str, *shape: int) -> Any:
        fan_in = int(np.prod(shape[1:]))
        return numpy_helper.from_array(
            (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32), name
        )

    nodes = [helper.make_node("Conv", ["x", "stem"], ["h0"], pads=[1, 1, 1, 1])]
    inits = [weight("stem", 32, 3, 3, 3)]
    prev = "h0"
    for i in range(8):
        inits += [weight(f"c{i}a", 32, 32, 3, 3), weight(f"c{i}b", 32, 32, 3, 3)]
        nodes += [
            helper.make_node("Conv", [prev, f"c{i}a"], [f"t{i}"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"t{i}"], [f"u{i}"]),
            helper.make_node("Conv", [f"u{i}", f"c{i}b"], [f"v{i}"], pads=[1, 1, 1, 1]),
            helper.make_node("Add", [prev, f"v{i}"], [f"w{i}"]),
            helper.make_node("Relu", [f"w{i}"], [f"o{i}"]),
        ]
        prev = f"o{i}"
    nodes += [
        helper.make_node("GlobalAveragePool", [prev], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc", "fcb"], ["logits"], transB=1),
    ]
    inits += [weight("fc", 10, 32), numpy_helper.from_array(np.zeros(10, np.float32), "fcb")]
    graph = helper.make_graph(
        nodes,
        "resnet_bench",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path


def _devices(count: int) -> list[Any]:
    from devices import presets

    chosen = []
    for i in range(count):
        profile = presets.get(PRESET_CYCLE[i % len(PRESET_CYCLE)])
        chosen.append(replace(profile, name=f"{profile.name}#{i}"))
    return chosen


def planning_time(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    from partitioner import ModelGraph, plan_pipeline

    rows: list[dict[str, Any]] = []
    print(f"\n== planning time (median of {args.repeats} runs) ==")
    print(
        f"{'nodes':>6} {'cuts':>6} {'devices':>7} {'analyse s':>10} {'latency s':>10} "
        f"{'throughput s':>12}"
    )
    for size in [int(s) for s in args.sizes.split(",")]:
        path = synthetic_model(work / f"synthetic{size}.onnx", size)
        analyse = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            graph = ModelGraph.from_onnx(path)
            analyse.append(time.perf_counter() - started)
        for count in [int(d) for d in args.devices.split(",")]:
            devices = _devices(count)
            timings: dict[str, float] = {}
            for objective in ("latency", "throughput"):
                runs = []
                for _ in range(args.repeats):
                    started = time.perf_counter()
                    plan_pipeline(graph, devices, objective=objective)
                    runs.append(time.perf_counter() - started)
                timings[objective] = statistics.median(runs)
            row = {
                "nodes": len(graph.nodes),
                "cuts": len(graph.cut_points()),
                "devices": count,
                "analyse_s": statistics.median(analyse),
                "latency_plan_s": timings["latency"],
                "throughput_plan_s": timings["throughput"],
            }
            rows.append(row)
            print(
                f"{row['nodes']:>6} {row['cuts']:>6} {count:>7} {row['analyse_s']:>10.3f} "
                f"{row['latency_plan_s']:>10.3f} {row['throughput_plan_s']:>12.3f}"
            )
    return rows


def this_machine() -> Any:
    """This machine as one single-thread device, measured like `devices` profiles."""
    from devices import presets
    from devices.compute import matmul_gflops, memory_bandwidth_gbps

    gflops, _, engine = matmul_gflops(threads=1)
    bandwidth = memory_bandwidth_gbps()
    base = presets.get("laptop")
    return replace(
        base,
        name="this-machine-1-thread",
        cores=1,
        gflops_fp32=gflops,
        mem_bandwidth_gbps=bandwidth,
        compute_engine=engine,
        source="measured",
    )


def _time_shard(path: Path, feeds: dict[str, np.ndarray], runs: int) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(5):
        session.run(None, feeds)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure_stages(
    model: Path, graph: Any, device: Any, stages: int, runs: int, work: Path
) -> list[dict[str, Any]]:
    """Cut `model` into equal-FLOP stages, time each shard, return per-stage records."""
    from partitioner import extract_shards, plan_cuts

    cumulative = np.cumsum([n.flops for n in graph.nodes])
    valid = set(p.position for p in graph.cut_points())
    cuts: list[int] = []
    for k in range(1, stages):
        target = cumulative[-1] * k / stages
        position = int(np.searchsorted(cumulative, target)) + 1
        while position not in valid and position < len(graph.nodes) - 1:
            position += 1
        if position in valid and (not cuts or position > cuts[-1]):
            cuts.append(position)
    devices = [replace(device, name=f"{device.name}#{i}") for i in range(len(cuts) + 1)]
    out = work / model.stem
    plan = extract_shards(plan_cuts(graph, devices, cuts, exits=()), model, out, graph=graph)
    rng = np.random.default_rng(0)
    carried = {
        spec.name: rng.standard_normal([d if isinstance(d, int) else 1 for d in spec.shape]).astype(
            np.float32
        )
        for spec in plan.model_inputs
    }
    import onnxruntime as ort

    records = []
    for stage in plan.stages:
        feeds = {name: carried[name] for name in stage.inputs}
        shard = out / str(stage.shard_file)
        measured = _time_shard(shard, feeds, runs)
        session = ort.InferenceSession(str(shard), providers=["CPUExecutionProvider"])
        produced = dict(
            zip(stage.shard_outputs, session.run(list(stage.shard_outputs), feeds), strict=True)
        )
        carried = {**carried, **produced}
        classes: dict[str, float] = {}
        for node in graph.nodes[stage.node_start : stage.node_end]:
            classes[node.op_class] = classes.get(node.op_class, 0.0) + node.flops
        records.append(
            {
                "model": model.stem,
                "stage": stage.index,
                "nodes": stage.node_end - stage.node_start,
                "node_range": [stage.node_start, stage.node_end],
                "flops": stage.flops,
                "flops_by_class": classes,
                "predicted_s": stage.predicted_compute_s,
                "measured_s": measured,
            }
        )
    return records


def _nonnegative_lstsq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Least squares with x >= 0: drop columns that come out negative and re-solve."""
    active = list(range(a.shape[1]))
    x = np.zeros(a.shape[1])
    while active:
        sub, *_ = np.linalg.lstsq(a[:, active], b, rcond=None)
        if (sub >= 0).all():
            x[active] = sub
            break
        active = [c for c, v in zip(active, sub, strict=True) if v > 0]
    return x


def fit_cost_model(records: list[dict[str, Any]], device: Any) -> Any:
    """Least-squares efficiencies per op class and a per-node overhead (non-negative)."""
    from partitioner import CostModel

    # fit only op classes carrying >= 5% of the measured FLOPs: tiny heads would be noise
    totals: dict[str, float] = {}
    for r in records:
        for c, f in r["flops_by_class"].items():
            totals[c] = totals.get(c, 0.0) + f
    grand = sum(totals.values()) or 1.0
    classes = sorted(c for c, f in totals.items() if f / grand >= 0.05)
    rate = device.gflops_fp32 * 1e9
    base = CostModel()
    rows, target = [], []
    for r in records:
        rows.append([r["flops_by_class"].get(c, 0.0) / rate for c in classes] + [r["nodes"]])
        target.append(r["measured_s"] - base.stage_overhead_s)
    solution = _nonnegative_lstsq(np.array(rows), np.maximum(np.array(target), 0.0))
    efficiency = dict(base.efficiency)
    for c, inverse in zip(classes, solution[:-1], strict=True):
        if inverse > 0:
            efficiency[c] = float(min(1.0 / inverse, 4.0))
    return CostModel(
        efficiency=efficiency,
        node_overhead_s=float(solution[-1]),
        stage_overhead_s=base.stage_overhead_s,
    )


def predicted_vs_measured(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Per stage: measured median vs the default cost model and vs a model fitted on
    the *other* model's stages (leave-one-model-out, so the fit is not judged on the
    data it was fitted to)."""
    from partitioner import DEFAULT_COST_MODEL, ModelGraph

    device = this_machine()
    print(
        f"\n== predicted vs measured stage latency on this machine (1 thread): "
        f"{device.gflops_fp32:.1f} GFLOPS, {device.mem_bandwidth_gbps:.1f} GB/s =="
    )
    models = [DIGITS, residual_cnn(work / "resnet_bench.onnx")]
    graphs = {m.stem: ModelGraph.from_onnx(m) for m in models}
    records: list[dict[str, Any]] = []
    for model in models:
        records += measure_stages(model, graphs[model.stem], device, args.stages, args.runs, work)
    fitted_all = fit_cost_model(records, device)
    held_out = {
        m.stem: fit_cost_model([r for r in records if r["model"] != m.stem], device) for m in models
    }
    summary: dict[str, Any] = {
        "device": device.to_dict(),
        "default_model": _cost_json(DEFAULT_COST_MODEL),
        "fitted_model_all": _cost_json(fitted_all),
        "fitted_model_held_out": {k: _cost_json(v) for k, v in held_out.items()},
        "stages": records,
    }
    print(
        f"{'model':<16} {'stage':>5} {'nodes':>5} {'MFLOPs':>8} {'measured ms':>11} "
        f"{'default ms':>10} {'ratio':>6} {'held-out fit ms':>15} {'ratio':>6}"
    )
    ratios_default, ratios_fitted = [], []
    for r in records:
        start, end = r["node_range"]
        r["fitted_s"] = held_out[r["model"]].segment_time(graphs[r["model"]], device, start, end)
        rd, rf = r["measured_s"] / r["predicted_s"], r["measured_s"] / r["fitted_s"]
        ratios_default.append(rd)
        ratios_fitted.append(rf)
        print(
            f"{r['model']:<16} {r['stage']:>5} {r['nodes']:>5} {r['flops'] / 1e6:>8.2f} "
            f"{r['measured_s'] * 1e3:>11.3f} {r['predicted_s'] * 1e3:>10.3f} {rd:>6.2f} "
            f"{r['fitted_s'] * 1e3:>15.3f} {rf:>6.2f}"
        )
    summary["median_ratio_default"] = statistics.median(ratios_default)
    summary["median_ratio_held_out"] = statistics.median(ratios_fitted)
    summary["worst_ratio_default"] = max(ratios_default, key=lambda x: abs(np.log(x)))
    summary["worst_ratio_held_out"] = max(ratios_fitted, key=lambda x: abs(np.log(x)))
    print(
        f"measured/predicted: default median {summary['median_ratio_default']:.2f} "
        f"(worst {summary['worst_ratio_default']:.2f}); held-out fit median "
        f"{summary['median_ratio_held_out']:.2f} (worst {summary['worst_ratio_held_out']:.2f})"
    )
    print(f"cost model fitted on both models: {summary['fitted_model_all']}")
    return summary


def _cost_json(model: Any) -> dict[str, Any]:
    return {
        "efficiency": dict(model.efficiency),
        "node_overhead_s": model.node_overhead_s,
        "stage_overhead_s": model.stage_overhead_s,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-plan-") as tmp:
        work = Path(tmp)
        if not args.skip_planning:
            results["planning"] = planning_time(args, work)
        if not args.skip_latency:
            results["latency"] = predicted_vs_measured(args, work)
    return results
