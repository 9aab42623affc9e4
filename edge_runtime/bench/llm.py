"""`edge-runtime bench llm`: tensor-parallel decoding over real agents, resident and streamed.

A synthetic Llama-shaped checkpoint (random fp32 weights, written here without torch;
~1 GB by default, or TARGETS.md's reference shape with `--reference`) is deployed on
1, 2 and 4 agent processes (`--agents`), each twice: with every weight resident, and
with a memory budget that holds `--budget-fraction` (¼) of each agent's share, the
rest streaming from disk through the sliding window. All deployments are loaded at
once and the generations are interleaved round by round (`--repeats`), so a busy
machine slows every variant alike; the table reports medians.

Per variant: time to first token for a `--prompt-tokens` prompt, median ms/token over
`--new-tokens` decode steps, tokens/s, the peak RSS of each agent while serving, and
for streamed variants the overlap efficiency: token time with prefetch ÷
max(compute+comm, disk) and ÷ (compute+comm + disk), where compute+comm is the
resident variant's token time with the same agents and disk is the window's read time
per token (the loader thread's seconds per decode step, slowest agent); the medians,
ratios and table are `llm_report.py`'s.

`--variants fp32,q4` adds 4-bit weights (`deploy_llm(quantize="q4")`, onnxruntime
`MatMulNBits`) next to the fp32 ones, in the same interleaved rounds, with a "vs fp32"
column (4-bit token time ÷ fp32's with the same agents). A 4-bit window variant gets
the fp32 window's budget; where that cannot take the 4-bit kernels' loading peak, the
share streams int8 blocks (`MatMulInteger`) and its overlap efficiency is taken against
its own compute (token time less the window's wait per token), since no resident
variant runs that kernel.

Each agent gets `--threads` BLAS threads (OPENBLAS_NUM_THREADS) and, with `--pin`, its
own cores (every thread's affinity set, like taskset), so agents do not share cores
on a machine that has enough.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.bench import llm_decode_modes, llm_security, llm_strategies, peer_dllama
from edge_runtime.bench.llm_limits import AgentLimits, budget_under, check_available
from edge_runtime.bench.llm_report import Variant, variant_report
from edge_runtime.bench.pinning import pin_agents

log = logging.getLogger(__name__)

MAX_CONTEXT = 512
# Hidden sizes of the default ~1 GB shape (TARGETS.md's reference with fewer layers
# and a smaller vocabulary): 205 MB per layer, 131 MB embedding + 131 MB LM head.
_HIDDEN, _INTERMEDIATE, _HEADS, _VOCAB = 2048, 5632, 16, 16000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--agents", default="1,2,4", help="agent counts to compare")
    parser.add_argument("--size", default="1GB",
                        help="approximate checkpoint size; layers are added to reach it")
    parser.add_argument("--reference", action="store_true",
                        help="use TARGETS.md's reference shape (1.76 GB) instead of --size")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2,
                        help="interleaved rounds over all variants")
    parser.add_argument("--budget-fraction", type=float, default=0.25,
                        help="share of each agent's weights its window holds (0 = skip)")
    parser.add_argument("--variants", default="fp32",
                        help="weight formats to compare side by side: fp32, q4 or fp32,q4")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads per agent")
    parser.add_argument("--sync", choices=["fp32", "bf16", "fp16", "q8"], default="fp32",
                        help="the allreduces' activation format (deploy_llm(sync=...))")
    parser.add_argument("--pin", action="store_true",
                        help="pin each agent to its own core(s) with taskset")
    parser.add_argument("--insecure", action="store_true",
                        help="agents without CURVE (to see what encryption costs)")
    llm_security.add_argument(parser)  # --security curve,insecure
    llm_decode_modes.add_argument(parser)  # --decode agents,steps
    llm_strategies.add_arguments(parser)  # --strategies ... --links ...
    parser.add_argument("--memory-limit", default=None,
                        help="start each agent in a memory cgroup with this limit (e.g. "
                        "600MiB; counts the page cache) and give its deployments the budget "
                        "an agent reads from it; needs root and cgroups (skipped, saying why, "
                        "where they cannot be created)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the checkpoint and agent caches go (default: "
                        "~/.cache/edge-runtime/bench-llm, kept so reruns skip the writing)")


def _shape(args: argparse.Namespace) -> Any:
    from edge_runtime.llm.synthetic import REFERENCE, SyntheticShape
    from edge_runtime.units import parse_size

    if args.reference:
        return REFERENCE
    target = parse_size(args.size)
    layer = (4 * _HIDDEN * _HIDDEN + 3 * _HIDDEN * _INTERMEDIATE) * 4
    fixed = 2 * _VOCAB * _HIDDEN * 4
    layers = max(1, round((target - fixed) / layer))
    return SyntheticShape(hidden=_HIDDEN, intermediate=_INTERMEDIATE, layers=layers,
                          heads=_HEADS, kv_heads=_HEADS, vocab=_VOCAB)


def variant_formats(text: str) -> list[str | None]:
    """`--variants` as deploy_llm's quantize values (None = fp32), in the given order."""
    from edge_runtime.errors import ConfigError

    out: list[str | None] = []
    for item in (x.strip().lower() for x in text.split(",") if x.strip()):
        if item not in ("fp32", "q4"):
            raise ConfigError(f"--variants: {item!r} is not a weight format; use fp32 and/or q4")
        fmt = None if item == "fp32" else item
        if fmt not in out:
            out.append(fmt)
    if not out:
        raise ConfigError("--variants names no weight format; use fp32, q4 or fp32,q4")
    return out


def _budgets(llm_plan: Any, fraction: float, config: Any) -> list[int]:
    from edge_runtime.llm.local import kv_cache_bytes
    from partitioner.tensor import ACTIVATION_RESERVE_BYTES

    shape = llm_plan.shape
    out = []
    for s in llm_plan.shares:
        # the window must hold the block in use and the one being read ahead
        largest = max(s.n_kv_heads * shape.kv_group_bytes(),
                      s.n_columns * shape.mlp_column_bytes()) + 2 * shape.hidden * 4
        window = max(int(fraction * s.weight_bytes), 2 * largest)
        out.append(window + kv_cache_bytes(config, s, MAX_CONTEXT) + ACTIVATION_RESERVE_BYTES)
    return out


def _counters(llm: Any) -> dict[str, dict[str, float]]:
    return {name: {"load_s": float(st["window"]["load_seconds"]),
                   "bytes": float(st["window"]["bytes_read"]),
                   "wait_s": float(st["window"]["wait_seconds"]),
                   "compute_s": float(st["compute_s"]), "comm_s": float(st["comm_s"]),
                   "steps": float(st["steps"]),
                   "peak_rss": float(st["peak_rss_bytes"]),
                   # the residency plan: bytes streamed per pass, predicted s/token
                   "planned_bytes": float(st["window"].get("streamed_bytes_per_pass", 0)),
                   "planned_s": float(st["window"].get("predicted_s_per_token", 0.0))}
            for name, st in llm.status().items()}


def _one_generation(llm: Any, prompt: list[int], new_tokens: int) -> dict[str, Any]:
    """TTFT, per-token decode intervals, and window/compute counters of the decode."""
    stream = llm.generate(prompt, new_tokens, stream=True)
    first = next(stream)
    prefill = dict(llm.runner.last_step)  # the hub's compute/comm split of the prefill
    before = _counters(llm)
    times = [time.perf_counter()]
    for _ in stream:
        times.append(time.perf_counter())
    after = _counters(llm)
    # per step the agent ran between the two readings: a decode run on the agents may be
    # a step or two ahead of the tokens read when `before` was taken
    decode = {name: {k: (after[name][k] - before[name][k])
                     / max(after[name]["steps"] - before[name]["steps"], 1)
                     for k in ("load_s", "bytes", "wait_s", "compute_s", "comm_s")}
              for name in after}
    plans = {name: (c["planned_bytes"], c["planned_s"]) for name, c in after.items()}
    return {"ttft_s": first.seconds, "intervals": list(np.diff(times)), "prefill": prefill,
            "plans": plans,
            "per_agent": decode, "peak_rss": {n: c["peak_rss"] for n, c in after.items()}}


def run(args: argparse.Namespace) -> dict[str, Any]:
    import edge_runtime as er
    from edge_runtime.llm import Checkpoint
    from edge_runtime.llm.synthetic import write_synthetic_checkpoint
    from edge_runtime.sdk.llm_plan import Q4_STREAM_NOTE, plan_llm

    counts = sorted({int(x) for x in args.agents.split(",") if x.strip()})
    formats = variant_formats(args.variants)
    shape = _shape(args)
    workdir = args.workdir or Path("~/.cache/edge-runtime/bench-llm").expanduser()
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = workdir / (f"synthetic-{shape.hidden}x{shape.intermediate}x{shape.layers}"
                          f"-v{shape.vocab}")
    t0 = time.perf_counter()
    write_synthetic_checkpoint(ckpt_dir, shape)
    ckpt = Checkpoint(ckpt_dir)
    config, digest = ckpt.config, ckpt.digest
    size = sum(f.stat().st_size for f in ckpt_dir.glob("*.safetensors"))
    del ckpt
    print(f"checkpoint {ckpt_dir} ({size / 1e9:.2f} GB: hidden {shape.hidden}, intermediate "
          f"{shape.intermediate}, {shape.layers} layers, vocab {shape.vocab}) ready in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)  # inherited by the agents
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    if args.strategies:  # predicted vs measured per strategy (bench/llm_strategies.py)
        return llm_strategies.run_strategies(args, ckpt_dir, config, digest)
    rng = np.random.default_rng(0)
    prompt = [int(t) for t in rng.integers(3, shape.vocab, args.prompt_tokens)]
    variants: list[Variant] = [
        (f"{n} agent(s) resident{'' if fmt is None else ' ' + fmt}", n, False, fmt)
        for fmt in formats for n in counts]
    if args.budget_fraction > 0:
        variants += [(f"{n} agent(s) window {args.budget_fraction:g}"
                      f"{'' if fmt is None else ' ' + fmt}", n, True, fmt)
                     for fmt in formats for n in counts]
    variants, mode_of = llm_security.expand(variants, args)  # --security modes
    decode = llm_decode_modes.modes(args)  # one generation per mode on each deployment
    rows = llm_decode_modes.expand(variants, decode)
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in rows}
    failures: dict[str, str] = {}
    caches = [workdir / f"agent-cache-{i}" for i in range(max(counts))]
    limit = _memory_limit(args)
    peer = peer_dllama.prepare(args, ckpt_dir, counts, formats)  # None without --peer-dllama
    # Each variant runs on agents of its own (so RSS is that variant's alone), started
    # afresh each round; the agents' caches persist, so only the first round converts.
    for rnd in range(args.repeats):
        # odd rounds run the variants in reverse, so none always runs first or last
        for name, n, streamed, fmt in variants if rnd % 2 == 0 else variants[::-1]:
            t1 = time.perf_counter()
            limits = None
            try:
                with llm_security.group_links(mode_of[name]), er.local_cluster(
                        n, cache_dirs=caches[:n], log_level="WARNING",
                        insecure=llm_security.insecure(mode_of[name]),
                        allow_checkpoint_dirs=[ckpt_dir]) as cluster:
                    if args.pin:
                        pin_agents(cluster, args.threads)
                    if limit is not None:
                        limits = AgentLimits(cluster, limit, f"{rnd}-{len(failures)}-{n}")
                    names = [a.name for a in cluster.agents]
                    budgets: list[int] | None = None
                    if streamed:
                        resident = plan_llm(cluster, config, digest, names, [None] * n,
                                            MAX_CONTEXT)
                        budgets = _budgets(resident, args.budget_fraction, config)
                    if limit is not None:  # what an agent under the limit offers
                        budgets = [min(b, budget_under(limit))
                                   for b in (budgets or [budget_under(limit)] * n)]
                    llm = cluster.deploy_llm(ckpt_dir, max_context=MAX_CONTEXT,
                                             memory_budget=budgets, threads=args.threads,
                                             quantize=fmt, sync=args.sync)
                    ready = time.perf_counter() - t1
                    for mode in llm_decode_modes.in_round(decode, rnd):
                        llm.runner.decode_on_agents = mode == "agents"
                        sample = _one_generation(llm, prompt, args.new_tokens)
                        sample["streamed"] = not all(st["window"]["resident"]
                                                     for st in llm.status().values())
                        sample["window_fraction"] = min(1.0, min(
                            st["window"]["budget_bytes"] / max(1, st["share"]["weight_bytes"])
                            for st in llm.status().values()))
                        sample["predicted_s_per_token"] = llm.plan.predicted_s_per_token
                        # a "q4" share its budget cannot take as 4-bit kernels: int8 blocks
                        sample["int8"] = any(Q4_STREAM_NOTE in n for n in llm.plan.notes)
                        if limits is not None:
                            sample["cgroup_peak"] = limits.peaks()
                            sample["oom_kills"] = limits.oom_kills()
                        samples[llm_decode_modes.row_name(name, mode)].append(sample)
                    llm.unload()
            except Exception as exc:  # a refused deployment or a killed agent is a result
                kills = limits.oom_kills() if limits is not None else {}
                failures[name] = (f"{type(exc).__name__}: {str(exc)[:160]}"
                                  + (f" (OOM kills {kills})" if any(kills.values()) else ""))
                print(f"round {rnd + 1}/{args.repeats} {name}: failed: {failures[name]}",
                      flush=True)
                continue
            finally:
                if limits is not None:
                    limits.close()
            print(f"round {rnd + 1}/{args.repeats} {name}: ready in {ready:.1f} s, TTFT "
                  f"{sample['ttft_s'] * 1e3:.0f} ms, median "
                  f"{statistics.median(sample['intervals']) * 1e3:.1f} ms/token", flush=True)
        if peer is not None:  # distributed-llama's counterparts, in the same round
            peer.run_round(rnd)
    ran = [v for v in rows if samples[v[0]]]
    report = llm_security.with_ratios(variant_report(args, shape, size, ran, samples, formats),
                                      mode_of)
    report = llm_decode_modes.with_ratios(report, decode)
    report["failures"] = failures
    report["memory_limit"] = limit
    for name, why in failures.items():
        print(f"{name}: {why}")
    if peer is not None:
        report["peer_dllama"] = peer.report(report["variants"])
    return report


def _memory_limit(args: argparse.Namespace) -> int | None:
    """--memory-limit in bytes, or None (also where cgroups cannot be created: said)."""
    from edge_runtime.units import parse_size

    if not args.memory_limit:
        return None
    why = check_available()
    if why is not None:
        print(f"--memory-limit ignored: memory cgroups cannot be created here ({why})",
              flush=True)
        return None
    return parse_size(args.memory_limit)
