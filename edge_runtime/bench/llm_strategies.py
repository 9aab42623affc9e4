"""`edge-runtime bench llm --strategies ...`: predicted against measured, per LLM strategy.

    edge-runtime bench llm --strategies single,tensor,pipeline,hybrid,auto \\
        --links loopback,wifi --agents 3 --size 256MB

For each link setting one local cluster of `--agents` real agent processes is started.
Every strategy's best layout is planned by the partitioner (`plan_llm_strategy`) from
the agents' measured profiles and the link (loopback: the agents' measured probes;
any other: the emulated figures plus the measured loopback under them) and deployed
as "llm-stage" stages — one stage for single and tensor — with the link emulated
(`transports.linkemu`) on every message the agents send for it (collectives, hidden
states, answers) and on the coordinator's requests. All layouts are loaded at once and
measured in interleaved rounds (`--repeats`), so a busy machine slows each alike.

Per strategy: predicted and measured ms/token of one stream (median decode interval
of a `--new-tokens` generation), decode tokens/s of 4 concurrent streams (the
scheduler batching them, micro-batches through the stages; each stream's decode rate,
summed), time to first token, each agent's peak RSS (every layout is loaded at once:
it holds all of them); the error of each prediction. `auto` is the planner's choice
(objective latency): the report says which strategy it chose and whether that is the
measured fastest. `--pin` gives agent i its own `--threads` cores."""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

STREAMS = 4
MAX_CONTEXT = 256
# A step of a busy 2-core machine may take seconds; a layout that hangs still fails.
STEP_TIMEOUT_S = 120.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`--strategies` and `--links` (registered by `bench/llm.py`)."""
    parser.add_argument("--strategies", default=None,
                        help="compare LLM strategies instead (single,tensor,pipeline,hybrid,"
                        "auto): predicted vs measured ms/token and tokens/s")
    parser.add_argument("--links", default="loopback,wifi",
                        help="with --strategies: links to emulate between the agents: "
                        "loopback, wifi, ethernet or RTT_MS:MBIT (default loopback,wifi)")


def _source(ckpt_dir: Path, config: Any, digest: str, names: list[str], threads: int) -> Any:
    from edge_runtime.sdk.llm_place import LlmSource

    return LlmSource(ckpt_dir, config, digest, dict.fromkeys(names), MAX_CONTEXT, None,
                     STREAMS, False, threads, None, tuple(names))


def _layouts(cluster: Any, source: Any, names: list[str], strategies: list[str],
             link: tuple[float, float] | None) -> dict[str, Any]:
    """Each explicit strategy's planned layout, and auto's choice, over `link`."""
    from edge_runtime.sdk.llm_pipeline_place import link_table
    from partitioner.llm_cost import LinkTable
    from partitioner.llm_strategy import plan_llm_strategy

    measured = link_table(cluster, names)
    if link is None:
        table = measured
    else:  # the emulated link on top of the loopback it runs over
        rtt, rate = link
        floor = min(measured.latency_s[i][j] for i in range(len(names))
                    for j in range(len(names)) if i != j) if len(names) > 1 else 0.0
        table = dataclasses.replace(LinkTable.uniform(len(names), rtt + 2 * floor, rate),
                                    hosts=measured.hosts, cores=measured.cores)
    profiles = [cluster.info(n).profile for n in names]
    shape = source.config.decoder_shape(MAX_CONTEXT * STREAMS)
    out: dict[str, Any] = {}
    for strategy in strategies:
        try:
            out[strategy] = plan_llm_strategy(shape, profiles, strategy, links=table,
                                              streams=STREAMS, model_digest=source.digest)
        except Exception as error:  # reported as a row that cannot run
            out[strategy] = error
    return out


def _measure(llm: Any, prompt: list[int], new_tokens: int) -> dict[str, Any]:
    from edge_runtime.sdk.scheduler import GenerationScheduler

    stream = llm.generate(prompt, new_tokens, stream=True, stop=[])
    first = next(stream)
    times = [time.perf_counter()]
    for _ in stream:
        times.append(time.perf_counter())
    scheduler = GenerationScheduler(llm).start()
    try:
        outs = scheduler.generate_many([prompt[: len(prompt) - k] for k in range(STREAMS)],
                                       new_tokens, stop=[])
    finally:
        scheduler.close()
    # decode while all streams run: each stream's tokens/s, summed (prefill excluded)
    rate = sum(1.0 / o.s_per_token for o in outs if o.s_per_token > 0)
    return {"ttft_s": first.seconds, "intervals": list(np.diff(times)),
            "tokens_per_s": rate,
            "peak_rss": {n: int(st["peak_rss_bytes"]) for n, st in llm.status().items()}}


def run_strategies(args: argparse.Namespace, ckpt_dir: Path, config: Any,
                   digest: str) -> dict[str, Any]:
    """Plan, deploy and measure every strategy on every link; print the table."""
    import edge_runtime as er
    from edge_runtime.errors import ConfigError
    from edge_runtime.sdk.fallback.policy import FallbackPolicy
    from edge_runtime.sdk.llm import LlmDeployment
    from edge_runtime.sdk.llm_pipeline_place import place_pipeline
    from partitioner.llm_cost import parse_link
    from transports.linkemu import LinkEmulator, LinkSpec

    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [s for s in strategies if s not in ("single", "tensor", "pipeline", "hybrid",
                                                   "auto")]
    if unknown:
        raise ConfigError(f"--strategies: {unknown} are not strategies")
    n = max(int(x) for x in args.agents.split(",") if x.strip())
    rng = np.random.default_rng(0)
    prompt = [int(t) for t in rng.integers(3, config.vocab, args.prompt_tokens)]
    results: dict[str, Any] = {"agents": n, "streams": STREAMS, "links": {}}
    for link_name in [x.strip() for x in args.links.split(",") if x.strip()]:
        try:
            link = None if link_name == "loopback" else parse_link(link_name)
        except ValueError as error:
            raise ConfigError(f"--links: {error}") from None
        emulate = None if link is None else (link[0] / 2, link[1])
        coordinator = None if link is None else LinkEmulator(
            default=LinkSpec(delay_s=link[0] / 2, bandwidth_bytes_per_s=link[1]), seed=1)
        with er.local_cluster(n, log_level="WARNING", allow_checkpoint_dirs=[ckpt_dir],
                              link_emulation=coordinator) as cluster:
            if args.pin:
                _pin(cluster, args.threads)
            names = [a.name for a in cluster.agents]
            source = _source(ckpt_dir, config, digest, names, args.threads)
            plans = _layouts(cluster, source, names, strategies, link)
            explicit = [s for s in strategies if s != "auto"]
            if "auto" in plans and not isinstance(plans["auto"], Exception):
                chosen = plans["auto"].strategy
                if chosen not in explicit:
                    explicit.append(chosen)
                    plans[chosen] = plans["auto"]
            deployed: dict[str, Any] = {}
            for strategy in explicit:
                layout = plans.get(strategy)
                if layout is None or isinstance(layout, Exception):
                    continue
                placement = place_pipeline(cluster, source, layout, emulate=emulate)
                # no failover: a layout that fails is reported, not replaced by another
                policy = FallbackPolicy(failover=False)
                deployed[strategy] = LlmDeployment(cluster, source, placement, None,
                                                   timeout_s=STEP_TIMEOUT_S, policy=policy)
            samples: dict[str, list[dict[str, Any]]] = {s: [] for s in deployed}
            for rnd in range(args.repeats):
                for strategy, llm in deployed.items():
                    try:
                        samples[strategy].append(_measure(llm, prompt, args.new_tokens))
                    except Exception:
                        for proc in cluster.processes:  # what the agents saw, then fail
                            print(f"--- {proc.name} log ---\n{proc.tail(40)}", flush=True)
                        raise
                    print(f"{link_name} round {rnd + 1}/{args.repeats} {strategy}: "
                          f"{statistics.median(samples[strategy][-1]['intervals']) * 1e3:.1f}"
                          " ms/token", flush=True)
            for llm in deployed.values():
                llm.unload()
        results["links"][link_name] = _rows(plans, samples)
    _print(results)
    return results


def _pin(cluster: Any, threads: int) -> None:
    """Agent i on cores [i*threads, (i+1)*threads), every thread of it (as taskset)."""
    import os

    cores = sorted(os.sched_getaffinity(0))
    for i, proc in enumerate(cluster.processes):
        mine = {cores[(i * threads + k) % len(cores)] for k in range(threads)}
        for task in Path(f"/proc/{proc.process.pid}/task").iterdir():
            os.sched_setaffinity(int(task.name), mine)


def _rows(plans: dict[str, Any], samples: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for strategy, layout in plans.items():
        if isinstance(layout, Exception):
            rows[strategy] = {"error": str(layout)}
            continue
        key = layout.strategy if strategy == "auto" else strategy
        runs = samples.get(key, [])
        if not runs:
            continue
        ms = 1e3 * statistics.median(x for r in runs for x in r["intervals"])
        tps = statistics.median(r["tokens_per_s"] for r in runs)
        predicted_ms = 1e3 * layout.predicted_s_per_token
        rows[strategy] = {
            "layout": layout.strategy, "groups": [list(g) for g in layout.groups],
            "layers": [list(s.layers) for s in layout.stages],
            "predicted_ms_per_token": predicted_ms, "measured_ms_per_token": ms,
            "error": ms / predicted_ms - 1,
            "predicted_tokens_per_s": layout.predicted_tokens_per_s,
            "measured_tokens_per_s": tps,
            "tokens_per_s_error": tps / layout.predicted_tokens_per_s - 1,
            "ttft_s": statistics.median(r["ttft_s"] for r in runs),
            "peak_rss_mib": {a: max(r["peak_rss"].get(a, 0) for r in runs) / 2**20
                             for a in {a for r in runs for a in r["peak_rss"]}},
        }
        if strategy == "auto":
            measured = {s: v["measured_ms_per_token"] for s, v in rows.items()
                        if s != "auto" and "measured_ms_per_token" in v}
            best = min(measured, key=lambda s: measured[s]) if measured else None
            rows[strategy]["reason"] = layout.reason
            rows[strategy]["measured_best"] = best
            rows[strategy]["picked_best"] = bool(best == layout.strategy or (
                best is not None and measured[layout.strategy] <= 1.05 * measured[best]))
    return rows


def _print(results: dict[str, Any]) -> None:
    print(f"\n{results['agents']} agents; tokens/s at {results['streams']} streams")
    head = (f"{'link':<9} {'strategy':<9} {'layout':<28} {'pred ms':>8} {'meas ms':>8} "
            f"{'err':>6} {'pred t/s':>8} {'meas t/s':>8} {'err':>6} {'TTFT ms':>8} "
            f"{'peak RSS MiB':>14}")
    print(head)
    print("-" * len(head))
    for link, rows in results["links"].items():
        for strategy, row in rows.items():
            if "measured_ms_per_token" not in row:
                print(f"{link:<9} {strategy:<9} cannot run: {row.get('error', '')[:80]}")
                continue
            layout = " | ".join(f"{'+'.join(g)}[{a}..{b - 1}]"
                                for g, (a, b) in zip(row["groups"], row["layers"], strict=True))
            name = strategy if strategy != "auto" else f"auto={row['layout']}"
            print(f"{link:<9} {name:<9} {layout[:28]:<28} "
                  f"{row['predicted_ms_per_token']:>8.2f} {row['measured_ms_per_token']:>8.2f} "
                  f"{row['error']:>+6.0%} {row['predicted_tokens_per_s']:>8.1f} "
                  f"{row['measured_tokens_per_s']:>8.1f} {row['tokens_per_s_error']:>+6.0%} "
                  f"{row['ttft_s'] * 1e3:>8.0f} "
                  f"{max(row['peak_rss_mib'].values()):>14.0f}")
        auto = rows.get("auto")
        if auto and "measured_best" in auto:
            verdict = "= measured best" if auto["picked_best"] else (
                f"!= measured best ({auto['measured_best']})")
            print(f"{link:<9} auto chose {auto['layout']} {verdict}: {auto['reason']}")


__all__ = ["add_arguments", "run_strategies"]
