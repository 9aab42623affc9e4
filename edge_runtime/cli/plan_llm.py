"""`edge-runtime plan --llm CHECKPOINT --devices ...`: predict every LLM strategy.

    edge-runtime plan --llm CHECKPOINT|config.json --devices raspberry-pi-5x8|profiles.json
        [--link wifi|ethernet|loopback|RTT_MS:MBIT] [--memory-budget 6GB]
        [--objective latency|throughput] [--streams 4] [--max-context 2048] [--out DIR]

Prints, for single device, tensor, pipeline and hybrid, the best layout's predicted
ms/token (one stream) and tokens/s (`--streams` concurrent streams) — from the device
profiles, the links (measured ones in a profiles.json, else `--link` for every pair)
and the memory budgets, with the α-β formulas of `transports.cost` — then the choice
and why. `--out DIR` writes the chosen layout, predictions included, to
DIR/llm_plan.json. A bare config.json is enough: no weights are read.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any


def parse_link(spec: str) -> tuple[float, float]:
    """`--link`: a named link or RTT_MS:MBIT, as (round trip s, bytes/s)."""
    from edge_runtime.errors import ConfigError
    from partitioner.llm_cost import parse_link as parse

    try:
        return parse(spec)
    except ValueError as error:
        raise ConfigError(f"--link: {error}") from None


def expand_devices(spec: str) -> str:
    """`raspberry-pi-5x8` -> eight of that preset (names made unique by `load_devices`)."""
    out: list[str] = []
    for part in spec.split(","):
        found = re.fullmatch(r"(.+?)x([0-9]+)", part.strip())
        out += [found[1]] * int(found[2]) if found and not Path(spec).is_file() else [part]
    return ",".join(out)


def load_config(path: Path) -> Any:
    from edge_runtime.errors import ConfigError
    from edge_runtime.llm.config import LlmConfig

    file = path / "config.json" if path.is_dir() else path
    try:
        return LlmConfig.from_dict(json.loads(file.read_text()))
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"cannot read an LLM config from {file}: {error}") from error


def print_layout(layout: Any) -> None:
    print(f"{'strategy':<9} {'ms/token':>10} {'tokens/s':>9}  layout (devices [layers])")
    print("-" * 78)
    for p in layout.predictions:
        if not p.feasible:
            print(f"{p.strategy:<9} {'-':>10} {'-':>9}  cannot run: {p.why[:200]}")
            continue
        stages = " | ".join(f"{'+'.join(g)} [{a}..{b - 1}]"
                            for g, (a, b) in zip(p.groups, p.layers, strict=True))
        mark = " <- chosen" if p.strategy == layout.strategy else ""
        print(f"{p.strategy:<9} {p.s_per_token * 1e3:>10.1f} {p.tokens_per_s:>9.2f}  "
              f"{stages}{mark}")
    print(f"(tokens/s at {layout.streams} concurrent streams; objective {layout.objective})")
    print(f"chosen: {layout.strategy} — {layout.reason}")
    for stage in layout.stages:  # what each device of the choice holds
        print(f"stage {stage.index}, layers {stage.layers[0]}..{stage.layers[1] - 1}:")
        print("\n".join(f"  {line}" for line in stage.plan.describe()))


def run_llm(args: argparse.Namespace, devices: list[Any], links: list[Any],
            budgets: list[int | None] | None) -> int:
    from partitioner.cost import Links
    from partitioner.llm_cost import LinkTable
    from partitioner.llm_strategy import plan_llm_strategy

    config = load_config(args.llm)
    names = [d.name for d in devices]
    if links:
        table = LinkTable.from_links(names, Links(links),
                                     coordinator=min((lk.rtt_s, lk.bandwidth_bytes_per_s)
                                                     for lk in links))
    else:
        rtt, rate = parse_link(args.link)
        table = LinkTable.uniform(len(devices), rtt, rate)
    if budgets is None:
        budgets = [int(d.mem_available_bytes) for d in devices]
    layout = plan_llm_strategy(config.decoder_shape(args.max_context), devices, "auto",
                               memory_budgets=budgets, links=table, objective=args.objective,
                               streams=args.streams)
    weights = sum(s.weight_bytes for st in layout.stages for s in st.plan.shares)
    print(f"{args.llm}: {config.layers} layers, hidden {config.hidden}, "
          f"{weights / 1e9:.1f} GB of fp32 weights; {len(devices)} devices; "
          f"context {args.max_context}")
    print_layout(layout)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "llm_plan.json").write_text(layout.to_json())
        print(f"wrote {args.out / 'llm_plan.json'}")
    return 0


__all__ = ["expand_devices", "parse_link", "print_layout", "run_llm"]
