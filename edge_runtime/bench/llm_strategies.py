"""`edge-runtime bench llm --strategies ...`: predicted against measured, per LLM strategy.

    edge-runtime bench llm --strategies single,tensor,pipeline,hybrid,auto \\
        --links loopback,wifi --agents 2,3,4 [--pin] [--reference]

For each agent count of `--agents` one local cluster of that many real agent
processes is started (pinned to a core each with `--pin`, the shape TARGETS.md's
reference checkpoint with `--reference`: `bench llm`'s own options) and kept for every
link of `--links`. Per link, every strategy's best layout is planned by the partitioner
(`plan_llm_strategy`) from the agents' measured profiles and the link (loopback: the
agents' measured probes; any other: the emulated figures plus the measured loopback
under them), and `auto`'s choice for each objective (latency: one stream; throughput:
`STREAMS` streams). Each layout is deployed as "llm-stage" stages — one stage for single
and tensor — with the link emulated (`transports.linkemu`) on every message the agents
send for it (collectives, hidden states, answers) and on the coordinator's requests
(the cluster's one `LinkEmulator`, switched per link: the cluster is not restarted).

The agents' link emulation is part of a deployment (`LlmStageSpec`), so each link needs
its own deployment of each layout; the agents' shard caches are `bench llm`'s (in
`--workdir`), so only a share's first deployment ever converts it. With `--pin` a layout
already measured in a smaller cluster (single: agent0 alone) is not measured again.
`llm_strategies_measure` says what is timed (one layout loaded at a time); a strategy
that auto chose but `--strategies` did not name is measured as well; a layout that
fails is a row saying why. `llm_strategies_report` makes the rows and the tables: one
table per agent count.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.bench.llm_strategies_measure import STREAMS, Sample, measure_layout
from edge_runtime.bench.llm_strategies_report import (
    OBJECTIVES,
    print_table,
    strategy_row,
    verdict,
)
from edge_runtime.bench.pinning import pin_agents
from edge_runtime.sdk.llm_pipeline_place import compute_profiles

MAX_CONTEXT = 256
EXPLICIT = ("single", "tensor", "pipeline", "hybrid")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`--strategies` and `--links` (registered by `bench/llm.py`)."""
    parser.add_argument("--strategies", default=None,
                        help="compare LLM strategies instead (single,tensor,pipeline,hybrid,"
                        "auto): predicted vs measured ms/token, tokens/s, TTFT, peak RSS; "
                        "one table per --agents count")
    parser.add_argument("--links", default="loopback,wifi",
                        help="with --strategies: links to emulate between the agents: "
                        "loopback, wifi, ethernet or RTT_MS:MBIT (default loopback,wifi)")


def _source(ckpt_dir: Path, config: Any, digest: str, names: list[str], threads: int) -> Any:
    from edge_runtime.sdk.llm_place import LlmSource

    return LlmSource(ckpt_dir, config, digest, dict.fromkeys(names), MAX_CONTEXT, None,
                     STREAMS, False, threads, None, tuple(names))


def _link_table(cluster: Any, names: list[str], link: tuple[float, float] | None) -> Any:
    """The measured links (loopback), or the emulated link on top of the loopback under it."""
    from edge_runtime.sdk.llm_pipeline_place import link_table
    from partitioner.llm_cost import LinkTable

    measured = link_table(cluster, names)
    if link is None:
        return measured
    rtt, rate = link
    floor = min(measured.latency_s[i][j] for i in range(len(names))
                for j in range(len(names)) if i != j) if len(names) > 1 else 0.0
    return dataclasses.replace(LinkTable.uniform(len(names), rtt + 2 * floor, rate),
                               hosts=measured.hosts, cores=measured.cores)


def plan_all(profiles: list[Any], shape: Any, table: Any, strategies: list[str],
             digest: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each named strategy's layout (objective latency) and auto's for each objective;
    a strategy that cannot run maps to its error."""
    from partitioner.llm_strategy import plan_llm_strategy

    def plan(strategy: str, objective: str) -> Any:
        try:
            return plan_llm_strategy(shape, profiles, strategy, links=table, streams=STREAMS,
                                     objective=objective, model_digest=digest)
        except Exception as error:  # reported as a row that cannot run
            return error

    explicit = {s: plan(s, "latency") for s in strategies if s in EXPLICIT}
    auto = {o: plan("auto", o) for o in OBJECTIVES} if "auto" in strategies else {}
    for layout in auto.values():  # measure what auto chose even if not named
        if not isinstance(layout, Exception) and layout.strategy not in explicit:
            explicit[layout.strategy] = plan(layout.strategy, "latency")
    return explicit, auto


def run_strategies(args: argparse.Namespace, ckpt_dir: Path, config: Any,
                   digest: str) -> dict[str, Any]:
    """Plan, deploy and measure every strategy on every link for every agent count;
    print one table per agent count."""
    from edge_runtime.errors import ConfigError
    from partitioner.llm_cost import parse_link

    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [s for s in strategies if s not in (*EXPLICIT, "auto")]
    if unknown or not strategies:
        raise ConfigError(f"--strategies: {unknown or 'nothing'} given; name some of "
                          f"{', '.join((*EXPLICIT, 'auto'))}")
    links: list[tuple[str, tuple[float, float] | None]] = []
    for name in (x.strip() for x in args.links.split(",") if x.strip()):
        try:
            links.append((name, None if name == "loopback" else parse_link(name)))
        except ValueError as error:
            raise ConfigError(f"--links: {error}") from None
    counts = sorted({int(x) for x in args.agents.split(",") if x.strip()})
    if not counts or counts[0] < 1:
        raise ConfigError(f"--agents {args.agents!r}: give agent counts of 1 or more, e.g. 2,3,4")
    rng = np.random.default_rng(0)
    prompt = [int(t) for t in rng.integers(3, config.vocab, args.prompt_tokens)]
    results: dict[str, Any] = {"streams": STREAMS, "prompt_tokens": len(prompt),
                               "new_tokens": args.new_tokens, "repeats": args.repeats,
                               "pinned": bool(args.pin), "by_agents": {}}
    measured: dict[tuple[Any, ...], list[Sample]] = {}  # pinned: reused across counts
    for n in counts:
        results["by_agents"][str(n)] = _one_count(args, n, ckpt_dir, config, digest,
                                                  strategies, links, prompt, measured)
        print_table(n, results["by_agents"][str(n)])
    # the largest cluster's rows, auto's verdicts aside: the view `bench all`'s report reads
    results["agents"] = counts[-1]
    results["links"] = {link: {s: r for s, r in rows.items() if s != "auto"}
                        for link, rows in results["by_agents"][str(counts[-1])].items()}
    return results


def _one_count(args: argparse.Namespace, n: int, ckpt_dir: Path, config: Any, digest: str,
               strategies: list[str], links: list[tuple[str, tuple[float, float] | None]],
               prompt: list[int], measured: dict[tuple[Any, ...], list[Sample]]
               ) -> dict[str, Any]:
    """One cluster of `n` agents, every link in turn: the rows by link. With `--pin`
    a layout already measured on the same agents and link in a smaller cluster (single:
    agent0 alone, whatever the count) is not measured again: pinned, the agents it
    does not use take nothing from it; its samples are in `measured`."""
    import edge_runtime as er
    from partitioner.llm_strategy import prefill_time
    from transports.linkemu import LinkEmulator, LinkSpec

    coordinator = LinkEmulator(default=None, seed=1)  # switched per link below
    out: dict[str, Any] = {}
    # `bench llm`'s agent caches: a share converted once serves every count and rerun
    workdir = args.workdir or Path("~/.cache/edge-runtime/bench-llm").expanduser()
    caches = [workdir / f"agent-cache-{i}" for i in range(n)]
    with er.local_cluster(n, log_level="WARNING", allow_checkpoint_dirs=[ckpt_dir],
                          cache_dirs=caches, link_emulation=coordinator) as cluster:
        if args.pin:
            pin_agents(cluster, args.threads)
        names = [a.name for a in cluster.agents]
        source = _source(ckpt_dir, config, digest, names, args.threads)
        # as the SDK plans: each share's arithmetic at its BLAS threads
        profiles = compute_profiles(cluster, source, names)
        shape = config.decoder_shape(MAX_CONTEXT * STREAMS)
        for link_name, link in links:
            coordinator.default = None if link is None else LinkSpec(
                delay_s=link[0] / 2, bandwidth_bytes_per_s=link[1])
            emulate = None if link is None else (link[0] / 2, link[1])
            table = _link_table(cluster, names, link)
            explicit, auto = plan_all(profiles, shape, table, strategies, digest)
            ready = {s: lay for s, lay in explicit.items() if not isinstance(lay, Exception)}
            keys = {s: (link_name, *_key(lay)) for s, lay in ready.items()}
            reused = {s for s in ready if args.pin and keys[s] in measured}
            samples = {s: measured[keys[s]] if s in reused else [] for s in ready}
            failed: dict[str, str] = {}
            for rnd in range(args.repeats):
                for strategy, layout in ready.items():
                    if len(samples[strategy]) >= args.repeats or strategy in failed:
                        continue  # measured in a smaller cluster (pinned), or failed
                    try:
                        sample = measure_layout(cluster, source, layout, emulate, prompt,
                                                args.new_tokens)
                    except Exception as error:  # a layout that fails is a row, not the end
                        failed[strategy] = f"{type(error).__name__}: {error}"
                        print(f"{n} agents {link_name} {strategy}: failed: "
                              f"{failed[strategy]}", flush=True)
                        continue
                    samples[strategy].append(sample)
                    print(f"{n} agents {link_name} round {rnd + 1}/{args.repeats} {strategy}: "
                          f"{sample.ms_per_token:.1f} ms/token, {sample.tokens_per_s:.1f} "
                          f"tokens/s at {STREAMS} streams, TTFT {sample.ttft_s * 1e3:.0f} ms "
                          f"(deployed in {sample.deploy_s:.1f} s)", flush=True)
            measured.update({keys[s]: samples[s] for s in ready if samples[s]})
            rows: dict[str, Any] = {
                s: {"error": str(lay)} if isinstance(lay, Exception) else
                {"error": failed.get(s, "not measured")} if not samples[s] else strategy_row(
                    lay, samples[s], prefill_time(lay, profiles, table, len(prompt)))
                for s, lay in explicit.items()}
            for s in reused:
                rows[s]["reused_from_smaller_cluster"] = True
            if auto:
                rows["auto"] = {o: {"error": str(lay)} if isinstance(lay, Exception) else
                                {**verdict(lay.strategy, rows, o, lay.reason),
                                 # auto's layout is the one measured under its strategy
                                 "same_layout": _key(lay) == _key(explicit[lay.strategy])}
                                for o, lay in auto.items()}
            out[link_name] = rows
    return out


def _key(layout: Any) -> tuple[Any, ...]:
    """What makes two layouts the same deployment: devices per stage, layers per stage."""
    if isinstance(layout, Exception):
        return ()
    return (layout.groups, tuple(stage.layers for stage in layout.stages))


__all__ = ["add_arguments", "plan_all", "run_strategies"]
