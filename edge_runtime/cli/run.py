"""`edge-runtime run MODEL`: deploy an ONNX model on a cluster and run it on inputs.

    edge-runtime run model.onnx --local 3 --presets raspberry-pi-4,jetson-orin-nano,phone \\
        --input image=x.npy --repeat 20 --output out/

The cluster is either local (`--local N` emulated agents on this machine, torn
down at exit) or real agents (`--connect host:port,...` with `--keys DIR`, or
`--discover` to find them over mDNS). Inputs are `.npy` files read without pickle.
It prints each output's shape, dtype and first values (argmax for a score vector),
which exit answered, and latency percentiles over `--repeat` runs.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_runtime.cli.trace import add_trace_argument

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

STRATEGIES = ("auto", "single", "pipeline")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="the ONNX model to run")
    parser.add_argument(
        "--input",
        dest="inputs",
        action="append",
        default=[],
        metavar="NAME=FILE.npy",
        help="one model input from a .npy file (repeat for each input)",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--local",
        type=int,
        default=None,
        metavar="N",
        help="start N emulated agents on this machine (default: 1 unless --connect/--discover)",
    )
    where.add_argument(
        "--connect",
        default=None,
        metavar="ADDR,...",
        help="comma-separated agent addresses, e.g. 10.0.0.2:7700,10.0.0.3:7700",
    )
    where.add_argument(
        "--discover",
        action="store_true",
        help="find agents on the local network with mDNS (needs edge-runtime[discovery])",
    )
    parser.add_argument(
        "--presets",
        default=None,
        metavar="A,B,C",
        help="device presets of the --local agents, e.g. raspberry-pi-4,jetson-orin-nano,phone",
    )
    parser.add_argument(
        "--keys", type=Path, default=None, help="CURVE keys directory for --connect/--discover"
    )
    parser.add_argument(
        "--insecure", action="store_true", help="talk to agents without CURVE (experiments only)"
    )
    parser.add_argument(
        "--strategy", choices=STRATEGIES, default="auto", help="how to split the model"
    )
    parser.add_argument(
        "--exit",
        dest="exits",
        action="append",
        default=[],
        metavar="NAME=THRESHOLD",
        help="let exit head NAME answer when its top softmax probability reaches THRESHOLD "
        "(repeatable; default: the plan's thresholds, i.e. run to the last exit)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, metavar="N", help="run N times for latency statistics"
    )
    parser.add_argument(
        "--output", type=Path, default=None, metavar="DIR", help="write each output as DIR/NAME.npy"
    )
    add_trace_argument(parser)  # traces the last run


def parse_exit_args(values: Sequence[str]) -> dict[str, float] | None:
    """`NAME=THRESHOLD` pairs (max-prob thresholds in 0..1) to a dict, or None if none given."""
    from edge_runtime.errors import ConfigError

    if not values:
        return None
    exits: dict[str, float] = {}
    for value in values:
        name, sep, text = value.partition("=")
        try:
            threshold = float(text)
        except ValueError:
            threshold = -1.0
        if not sep or not name.strip() or not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"--exit {value!r}: write NAME=THRESHOLD with 0 <= THRESHOLD <= 1")
        exits[name.strip()] = threshold
    return exits


def parse_input_args(values: Sequence[str]) -> dict[str, Path]:
    """`NAME=FILE` pairs to a dict; a malformed or repeated name is a `ConfigError`."""
    from edge_runtime.errors import ConfigError

    parsed: dict[str, Path] = {}
    for value in values:
        name, sep, file = value.partition("=")
        name, file = name.strip(), file.strip()
        if not sep or not name or not file:
            raise ConfigError(f"--input {value!r}: write NAME=FILE.npy, e.g. --input image=x.npy")
        if name in parsed:
            raise ConfigError(f"--input {name} is given twice")
        parsed[name] = Path(file).expanduser()
    return parsed


def load_inputs(files: dict[str, Path]) -> dict[str, np.ndarray]:
    """Read each `.npy` without pickle (an object array is refused, not executed)."""
    import numpy as np

    from edge_runtime.errors import ConfigError

    arrays: dict[str, np.ndarray] = {}
    for name, path in files.items():
        if not path.is_file():
            raise ConfigError(f"--input {name}: no file {path}")
        try:
            array = np.load(path, allow_pickle=False)
        except ValueError as error:  # object arrays need pickle, which we never allow
            raise ConfigError(
                f"--input {name}: {path} cannot be read without pickle ({error}); "
                "save a numeric array with numpy.save"
            ) from error
        except OSError as error:
            raise ConfigError(f"--input {name}: {path} is not a .npy file ({error})") from error
        if not isinstance(array, np.ndarray):
            raise ConfigError(f"--input {name}: {path} is not a single array; use one .npy each")
        arrays[name] = array
    return arrays


def summarize_array(array: np.ndarray, first: int = 5) -> str:
    """`float32[1, 10]  argmax 3  [0.01, 0.02, ...]`: what a person checks first."""
    import numpy as np

    head = f"{array.dtype.name}[{', '.join(map(str, array.shape))}]"
    flat = array.reshape(-1)
    parts = [head]
    if array.ndim >= 1 and array.shape[-1] > 1 and np.issubdtype(array.dtype, np.number):
        top = np.argmax(array.reshape(-1, array.shape[-1]), axis=-1)
        shown = ", ".join(map(str, top[:first])) + (", ..." if top.size > first else "")
        parts.append(f"argmax {shown}")
    if flat.size:
        values = ", ".join(
            f"{v:.4g}" if np.issubdtype(array.dtype, np.floating) else str(v) for v in flat[:first]
        )
        parts.append(f"[{values}{', ...' if flat.size > first else ''}]")
    return "  ".join(parts)


def output_file_name(name: str) -> str:
    """A safe file name for an output tensor (ONNX names may hold '/' or ':')."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip(".")
    return f"{safe or 'output'}.npy"


def _check_args(args: argparse.Namespace) -> None:
    from edge_runtime.errors import ConfigError

    if not args.model.is_file():
        raise ConfigError(f"no model file at {args.model}")
    if args.repeat < 1:
        raise ConfigError(f"--repeat must be at least 1, got {args.repeat}")
    if args.local is not None and args.local < 1:
        raise ConfigError(f"--local must be at least 1, got {args.local}")
    if args.presets and (args.connect or args.discover):
        raise ConfigError("--presets applies to --local agents only")
    if args.presets and args.local is not None:
        _presets(args, args.local)


def _presets(args: argparse.Namespace, count: int) -> list[str] | None:
    from edge_runtime.errors import ConfigError

    if not args.presets:
        return None
    names = [p.strip() for p in args.presets.split(",") if p.strip()]
    if len(names) != count:
        raise ConfigError(f"--presets lists {len(names)} presets for --local {count} agents")
    return names


def _open_cluster(args: argparse.Namespace) -> Any:
    import edge_runtime as er
    from edge_runtime.discovery import discover

    if args.connect or args.discover:
        endpoints = discover(args.connect, mdns=args.discover)
        print(f"connecting to {len(endpoints)} agent(s): {', '.join(endpoints)}")
        if args.insecure:
            return er.connect(endpoints, insecure=True)
        return er.connect(endpoints, keys=args.keys)
    count = args.local or (len(args.presets.split(",")) if args.presets else 1)
    presets = _presets(args, count)
    print(f"starting {count} local agent(s)" + (f": {', '.join(presets)}" if presets else ""))
    return er.local_cluster(count, presets=presets)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from edge_runtime.cli.progress_line import ProgressLine
    from edge_runtime.demo.stats import LatencyStats, exit_counts
    from edge_runtime.errors import ConfigError

    _check_args(args)
    exits = parse_exit_args(args.exits)
    feeds = load_inputs(parse_input_args(args.inputs))
    if not feeds:
        raise ConfigError("no inputs: give each model input as --input NAME=FILE.npy")
    with _open_cluster(args) as cluster:
        # shards sent: one line that updates in place
        model = cluster.deploy(str(args.model), strategy=args.strategy, exits=exits,
                               progress=ProgressLine())
        plan = model.plan
        print(f"plan: {plan.strategy}, {len(plan.stages)} stage(s)")
        for stage in plan.stages:
            exit_text = f", exit {stage.exit}" if stage.exit else ""
            nodes = f"nodes {stage.node_start}-{stage.node_end - 1}"
            print(f"  stage {stage.index}: {stage.device}, {nodes}{exit_text}")
        results = [model.run(feeds, trace=args.trace is not None and i == args.repeat - 1)
                   for i in range(args.repeat)]
    last = results[-1]
    print("outputs:")
    width = max(len(name) for name in last.outputs)
    for name, array in last.outputs.items():
        print(f"  {name:<{width}}  {summarize_array(np.asarray(array))}")
    counts = exit_counts(r.exit for r in results)
    print("answered by: " + ", ".join(f"{name} ×{count}" for name, count in counts.items()))
    stats = LatencyStats.of([r.latency_s for r in results])
    print(
        f"latency over {stats.count} run(s): p50 {stats.p50_s * 1e3:.2f} ms, "
        f"p90 {stats.p90_s * 1e3:.2f} ms, mean {stats.mean_s * 1e3:.2f} ms"
    )
    print("time per device (last run):")
    for agent, row in last.per_device().items():
        compute, transfer = row["compute_s"] * 1e3, row["transfer_s"] * 1e3
        print(f"  {agent}: {compute:.2f} ms compute, {transfer:.2f} ms transfer")
    _print_predicted(plan, last)
    if last.trace is not None:
        from edge_runtime.cli.trace import write_trace

        write_trace(last.trace, args.trace)
    if args.output is not None:
        args.output.mkdir(parents=True, exist_ok=True)
        for name, array in last.outputs.items():
            np.save(args.output / output_file_name(name), np.asarray(array), allow_pickle=False)
        print(f"outputs written to {args.output}/")
    return 0


def _print_predicted(plan: Any, result: Any) -> None:
    """The plan's compute+transfer per stage next to the last run's (stages that ran)."""
    from edge_runtime.trace.compare import Comparison, format_rows

    measured = {t.stage: t.compute_s + t.transfer_s for t in result.stages}
    rows = [Comparison(f"stage {i} ({stage.device})", predicted, measured[i])
            for i, (stage, predicted) in enumerate(zip(plan.stages, result.predicted_stages,
                                                       strict=False)) if i in measured]
    if rows:
        print("predicted vs measured (last run, compute + transfer):")
        print("\n".join(format_rows(rows)))
