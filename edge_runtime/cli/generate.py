"""`edge-runtime generate CHECKPOINT`: text generation with an LLM split across agents.

    edge-runtime generate examples/tinylm/checkpoint --local 2 \\
        --presets raspberry-pi-4,jetson-orin-nano --memory-budget 64MB \\
        --prompt "Permission is hereby granted" --max-new-tokens 60 [--quantize q4]

Tokens are printed as they stream in, then one summary line: time to first token,
ms/token, tokens/s and the peak RSS of each agent (its serving peak, after loading).
The cluster is local (`--local N`, optionally emulating `--presets`) or real agents
(`--connect ADDR,...` with `--keys DIR`); the checkpoint directory must be readable
at the same path on every agent.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from edge_runtime.cli.cluster_args import add_cluster_arguments, open_cluster
from edge_runtime.cli.trace import add_trace_argument, tracing_for, write_capture

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path,
                        help="Hugging Face checkpoint directory (Llama, Mistral, Qwen2) "
                        "or a llama.cpp .gguf file")
    text = parser.add_mutually_exclusive_group(required=True)
    text.add_argument("--prompt", default=None, help="the prompt text")
    text.add_argument("--ids", default=None, metavar="I,J,...",
                      help="the prompt as token ids (for checkpoints without tokenizer.json)")
    add_cluster_arguments(parser)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--strategy", default="tensor",
                        choices=["tensor", "pipeline", "hybrid", "single", "auto"],
                        help="how to split the model (default tensor; auto: the best predicted "
                        "from the agents' profiles and measured links, see `plan --llm`)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-k", type=int, default=0, help="0 = no top-k filter")
    parser.add_argument("--top-p", type=float, default=1.0, help="1.0 = no nucleus filter")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed")
    parser.add_argument("--stop", action="append", default=None, metavar="TEXT",
                        help="stop when this text appears (repeatable; default: EOS)")
    add_trace_argument(parser)


def _prompt(args: argparse.Namespace) -> str | list[int]:
    from edge_runtime.errors import ConfigError

    if args.prompt is not None:
        return str(args.prompt)
    try:
        return [int(t) for t in args.ids.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"--ids {args.ids!r}: write comma-separated integers") from None


def summary_line(ttft_s: float, s_per_token: float, tokens: int,
                 peaks: dict[str, int]) -> str:
    """The one line `generate` ends with (also used by the demo)."""
    rate = 1.0 / s_per_token if s_per_token > 0 else 0.0
    rss = ", ".join(f"{name} {peak / 2**20:.0f} MiB" for name, peak in peaks.items())
    return (f"{tokens} tokens: time to first token {ttft_s * 1e3:.0f} ms, "
            f"{s_per_token * 1e3:.1f} ms/token, {rate:.1f} tokens/s; peak RSS {rss}")


def run(args: argparse.Namespace) -> int:
    from edge_runtime.cli.progress_line import ProgressLine
    from edge_runtime.errors import ConfigError
    from edge_runtime.llm.gguf import resolve_checkpoint, stderr_progress

    # a .gguf: its converted directory (converted once, then cached)
    args.checkpoint = resolve_checkpoint(args.checkpoint, progress=stderr_progress)
    if not args.checkpoint.is_dir():
        raise ConfigError(f"no checkpoint directory at {args.checkpoint}")
    prompt = _prompt(args)
    with open_cluster(args) as cluster:
        # files sent, shares converted and quantized: one line that updates in place
        llm = cluster.deploy_llm(args.checkpoint, args.strategy,
                                 memory_budget=args.memory_budget,
                                 max_context=args.max_context, progress=ProgressLine(),
                                 quantize=args.quantize, sync=args.sync)
        print(llm.describe(), file=sys.stderr)
        if isinstance(prompt, str):
            print(prompt, end="", flush=True)
        events = []
        with tracing_for(llm, args.trace) as capture:
            for event in llm.generate(prompt, args.max_new_tokens, temperature=args.temperature,
                                      top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                                      stop=args.stop, stream=True):
                events.append(event)
                print(event.text if llm.engine.tokenizer else f" {event.token_id}", end="",
                      flush=True)
        print()
        ttft = events[0].seconds if events else 0.0
        per_token = (events[-1].seconds - ttft) / (len(events) - 1) if len(events) > 1 else 0.0
        status = llm.status()
        peaks = {name: int(st["peak_rss_bytes"]) for name, st in status.items() if st}
        print_predicted(llm, per_token, status)
        print(summary_line(ttft, per_token, len(events), peaks))  # the last line, as always
        write_capture(capture, args.trace)
    return 0


def print_predicted(llm: Any, s_per_token: float, status: dict[str, Any]) -> None:
    """The plan's compute per step on each agent, and its ms/token, next to the run's.

    Measured per agent: its compute seconds over its steps since the deploy (the prompt's
    step included); ms/token: the decode steps the app saw."""
    from edge_runtime.trace.compare import Comparison, format_rows

    plan = llm.plan
    rows = []
    for name, share in zip(llm.agents, getattr(plan, "shares", ()), strict=False):
        row = status.get(name) or {}
        steps = int(row.get("steps", 0))
        if steps:
            rows.append(Comparison(f"{name} compute/step", share.compute_s_per_token,
                                   float(row.get("compute_s", 0.0)) / steps))
    if s_per_token > 0 and hasattr(plan, "predicted_s_per_token"):
        rows.append(Comparison("whole step (ms/token)", plan.predicted_s_per_token, s_per_token))
    if rows:
        print("predicted vs measured:")
        print("\n".join(format_rows(rows)))
