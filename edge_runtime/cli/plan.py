"""`edge-runtime plan`: split an ONNX model across devices, print the plan, write shards.

    edge-runtime plan MODEL.onnx --devices pi4,jetson-orin-nano,phone|profiles.json
        [--objective latency|throughput] [--slo-ms N] [--calibration data.npz] --out PLAN_DIR

Devices are preset names (comma-separated) or a JSON file holding one `DeviceProfile`
dict, a list of them, or {"devices": [...], "links": [...]} with `LinkProfile` dicts.
With `--calibration` (an .npz with the model's input arrays — by input name, or
`images`/`x` for a one-input model — and `labels`), the model's exits are run once in
onnxruntime on that set to calibrate their thresholds; with `--slo-ms` as well, cut
points and thresholds are chosen together under the latency SLO.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Keys tried, in order, for the input of a one-input model in a calibration .npz.
_SINGLE_INPUT_KEYS = ("images", "x", "inputs", "input", "data")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, nargs="?", default=None,
                        help="the ONNX model to split (not with --llm)")
    parser.add_argument("--llm", type=Path, default=None,
                        help="an LLM checkpoint (or its config.json, or a .gguf): predict "
                             "single, tensor, pipeline and hybrid layouts and print the choice "
                             "(plan_llm.py)")
    parser.add_argument("--link", default="wifi",
                        help="--llm: the link between every pair of devices without a measured "
                             "one: wifi, ethernet, loopback or RTT_MS:MBIT (default wifi)")
    parser.add_argument("--streams", type=int, default=4,
                        help="--llm: concurrent streams for the tokens/s prediction (default 4)")
    parser.add_argument("--max-context", type=int, default=2048,
                        help="--llm: context the KV caches hold (default 2048)")
    parser.add_argument(
        "--devices",
        required=True,
        help="comma-separated preset names (e.g. pi4,jetson-orin-nano,phone; NAMExN for N of "
        "one) or a profiles.json",
    )
    parser.add_argument(
        "--objective",
        choices=["latency", "throughput"],
        default="latency",
        help="minimise one request's latency, or the slowest stage of a stream (default latency)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=1, help="batch size to plan for (default 1)"
    )
    parser.add_argument(
        "--memory-budget",
        default=None,
        help="memory budget per device, e.g. 512MB (one for all, or comma-separated per device)",
    )
    parser.add_argument(
        "--calibration", type=Path, default=None, help="labelled .npz to calibrate exits"
    )
    parser.add_argument(
        "--policy",
        choices=["max_prob", "entropy", "margin", "patience"],
        default="max_prob",
        help="exit policy to calibrate (default max_prob)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.01,
        help="accuracy the exits may lose against the final exit (default 0.01)",
    )
    parser.add_argument(
        "--slo-ms", type=float, default=None, help="expected-latency SLO (needs --calibration)"
    )
    parser.add_argument("--no-exits", action="store_true", help="ignore the model's exit heads")
    parser.add_argument(
        "--out", type=Path, default=None,
        help="directory for plan.json and the shards (--llm: for llm_plan.json)"
    )


def load_devices(spec: str) -> tuple[list[Any], list[Any]]:
    """Device profiles and link profiles from preset names or a JSON file; names made unique."""
    from dataclasses import replace

    from devices import DeviceProfile, LinkProfile, presets
    from edge_runtime.errors import ConfigError

    links: list[Any] = []
    path = Path(spec)
    if spec.endswith(".json") or path.is_file():
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ConfigError(f"cannot read device profiles from {path}: {error}") from error
        if isinstance(data, dict) and "name" in data:
            data = [data]  # one profile, as `edge-runtime profile --json` writes it
        entries = data.get("devices", []) if isinstance(data, dict) else data
        profiles = [DeviceProfile.from_dict(entry) for entry in entries]
        if isinstance(data, dict):
            links = [LinkProfile.from_dict(entry) for entry in data.get("links", [])]
    else:
        profiles = [presets.get(name) for name in spec.split(",") if name.strip()]
    if not profiles:
        raise ConfigError(f"no devices in {spec!r}; name presets such as pi4,phone")
    seen: dict[str, int] = {}
    unique = []
    for profile in profiles:
        count = seen.get(profile.name, 0) + 1
        seen[profile.name] = count
        unique.append(profile if count == 1 else replace(profile, name=f"{profile.name}#{count}"))
    return unique, links


def exit_logits(model_path: Path, data_path: Path, outputs: Sequence[str]) -> tuple[list[Any], Any]:
    """Run the whole model on a labelled .npz; return each named output's logits and the labels."""
    import numpy as np
    import onnxruntime as ort

    from edge_runtime.errors import ConfigError

    try:
        data = np.load(data_path)
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read calibration data {data_path}: {error}") from error
    if "labels" not in data:
        raise ConfigError(f"{data_path} has no 'labels' array; save labels=... with the inputs")
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    feeds = {}
    for name in names:
        if name in data:
            feeds[name] = data[name]
        elif len(names) == 1 and any(k in data for k in _SINGLE_INPUT_KEYS):
            feeds[name] = data[next(k for k in _SINGLE_INPUT_KEYS if k in data)]
        else:
            raise ConfigError(f"{data_path} has no array for model input {name!r}")
    return list(session.run(list(outputs), feeds)), data["labels"]


def print_plan(plan: Any) -> None:
    print(f"model {plan.model_name}  strategy {plan.strategy}  objective {plan.objective}")
    header = f"{'stage':>5}  {'device':<20} {'nodes':>11} {'exit':<8} {'compute ms':>10} "
    header += f"{'send ms':>8} {'send KB':>9} {'memory MB':>9}"
    print(header)
    print("-" * len(header))
    for s in plan.stages:
        print(
            f"{s.index:>5}  {s.device:<20} {f'{s.node_start}-{s.node_end - 1}':>11} "
            f"{s.exit or '':<8} {s.predicted_compute_s * 1e3:>10.3f} "
            f"{s.predicted_transfer_s * 1e3:>8.3f} {s.transfer_bytes / 1e3:>9.1f} "
            f"{s.memory_bytes / 1e6:>9.2f}"
        )
    print(
        f"predicted latency {plan.predicted_latency_s * 1e3:.3f} ms, "
        f"throughput {plan.predicted_throughput_rps:.1f} req/s"
    )
    for e in plan.exits:
        threshold = "-" if e.threshold is None else f"{e.threshold:.4g}"
        accuracy = "-" if e.accuracy is None else f"{e.accuracy:.4f}"
        print(
            f"exit {e.name:<8} stage {e.stage_index}  {e.policy} {threshold:>8}  "
            f"accuracy {accuracy}  flops {e.flops_fraction:.1%}"
        )
    if plan.expected_latency_s is not None:
        print(f"expected latency with exits {plan.expected_latency_s * 1e3:.3f} ms")
    calibration = plan.extra.get("calibration")
    if calibration:
        print(
            f"calibration curve ({calibration['policy']}; accuracy vs expected latency, "
            f"final exit alone {calibration['final_accuracy']:.4f}):"
        )
        for point in calibration["curve"]:
            chosen = (
                " <- chosen"
                if point["accuracy"] == calibration["accuracy"]
                and (abs(point["expected_latency_s"] - plan.expected_latency_s) < 1e-12)
                else ""
            )
            rates = "/".join(f"{r:.0%}" for r in point["exit_rates"])
            print(
                f"  {point['expected_latency_s'] * 1e3:8.3f} ms  accuracy {point['accuracy']:.4f}"
                f"  exits {rates}{chosen}"
            )


def run(args: argparse.Namespace) -> int:
    from edge_runtime.cli.plan_llm import expand_devices, run_llm
    from edge_runtime.errors import ConfigError
    from edge_runtime.units import parse_size
    from partitioner import (
        ModelGraph,
        apply_calibration,
        calibrate_exits,
        exit_latencies,
        extract_shards,
        plan_pipeline,
        plan_with_slo,
    )

    devices, links = load_devices(expand_devices(args.devices))
    budgets: list[int | None] | None = None
    if args.memory_budget:
        sizes = [parse_size(s) for s in args.memory_budget.split(",")]
        if len(sizes) not in (1, len(devices)):
            raise ConfigError(
                f"--memory-budget gives {len(sizes)} sizes for {len(devices)} devices"
            )
        budgets = list(sizes * len(devices) if len(sizes) == 1 else sizes)
    if args.llm is not None:
        from edge_runtime.llm.gguf import resolve_config

        args.llm = resolve_config(args.llm)  # a .gguf: a config.json of its metadata
        return run_llm(args, devices, links, budgets)
    if args.model is None or args.out is None:
        raise ConfigError("plan needs MODEL.onnx and --out DIR (or --llm CHECKPOINT)")
    if args.slo_ms is not None and args.calibration is None:
        raise ConfigError("--slo-ms needs --calibration (exit accuracies come from labelled data)")
    graph = ModelGraph.from_onnx(args.model, args.batch_size)
    exits = () if args.no_exits else None
    if args.slo_ms is not None and graph.exits and not args.no_exits:
        logits, labels = exit_logits(args.model, args.calibration, [h.output for h in graph.exits])
        plan = plan_with_slo(
            graph,
            devices,
            links,
            logits,
            labels,
            args.slo_ms / 1e3,
            policy=args.policy,
            memory_budgets=budgets,
        )
    else:
        plan = plan_pipeline(
            graph, devices, links, objective=args.objective, memory_budgets=budgets, exits=exits
        )
        if args.calibration is not None and len(plan.exits) > 1:
            logits, labels = exit_logits(
                args.model, args.calibration, [e.output for e in plan.exits]
            )
            calibration = calibrate_exits(
                logits, labels, exit_latencies(plan), policy=args.policy, tolerance=args.tolerance
            )
            plan = apply_calibration(plan, calibration)
    plan = extract_shards(plan, args.model, args.out, graph=graph)
    print_plan(plan)
    print(f"wrote {args.out / 'plan.json'} and {len(plan.stages)} shard(s)")
    return 0
