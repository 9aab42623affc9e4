"""`edge-runtime bench serve`: continuous batching through the agents, 1 to 8 streams at once.

Why: decode reads every weight once per step, so B sequences sharing a step should cost
little more than one. Issue 11's target: 4 concurrent streams give ≥ 3× the tokens/s of
one stream while each stream's token time stays ≤ 1.3× its single-stream time, fp32 and
4-bit. This suite measures that for each configuration (agents × weight format).

What runs: TARGETS.md's reference checkpoint shape (random weights, written by
`llm.synthetic` without torch; `--quick`: a tiny shape) on one local cluster per
`--agents` count (with `--pin`, each agent on its own core(s), as `bench llm` pins
them), one deployment per `--variants` format on each, every one made with `max_batch`
= the largest `--streams` count, all loaded at once. Each round visits every deployment
and, on it, every stream count (reversed on odd rounds, so drift favours no count): N
prompts submitted at once from this thread to a `GenerationScheduler` started for that
measurement and closed after it (so one thread owns the cluster at a time), each for
exactly `--new-tokens` tokens (no stop tokens), each stream read by its own thread that
timestamps its tokens as they arrive.

Per (agents, variant, streams), over `--rounds`:
- tokens/s: N × new tokens ÷ (the last token of any stream − the first submission),
  median over rounds;
- ms/token: each stream's decode time per token after its first (the scheduler's own
  timestamps), median over streams and rounds;
- TTFT p50/p99: submission → first token as its reader saw it, over every stream of
  every round (with few samples p99 is about the maximum);
- steps/token: forward steps the agents ran ÷ new tokens (1.0 = every stream in every
  step; more = some stream joined a step late);
and per configuration the target ratios of 4 streams to 1.

Correctness in the same run: before any scheduler starts, each prompt is generated alone
(`LlmDeployment.generate`, greedy, the same length); every batched stream's token ids
must equal its prompt's alone → `outputs_equal` in the JSON.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.bench.llm_report import print_row
from edge_runtime.bench.pinning import pin_agents
from edge_runtime.bench.serve_variants import PLAIN_Q4, plain_q4_budgets
from edge_runtime.bench.serve_variants import formats as formats_of

# Issue 11's targets, tokens/s and per-stream ms/token at 4 streams over 1 stream.
TPS_RATIO_TARGET = 3.0
LATENCY_RATIO_TARGET = 1.3
# How long a reader waits for a stream's next token before the measurement fails.
TOKEN_TIMEOUT_S = 300.0
# One configuration: (agents, quantize: None = fp32, "q4" or PLAIN_Q4).
Config = tuple[int, str | None]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--agents", default="1,2", help="agent counts to compare")
    parser.add_argument("--variants", default="fp32,q4",
                        help="weight formats to compare side by side: fp32, q4, q4-plain "
                        "(4-bit with a budget that holds no int8 prefill twins), e.g. fp32,q4")
    parser.add_argument("--streams", default="1,2,4,8",
                        help="concurrent streams to measure; max_batch is the largest")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens per stream")
    parser.add_argument("--prompt-tokens", type=int, default=16,
                        help="prompt length of stream 0; stream i's is this + i mod 4")
    parser.add_argument("--rounds", type=int, default=2,
                        help="interleaved rounds over every configuration and stream count")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads per agent")
    parser.add_argument("--pin", action="store_true",
                        help="pin each agent to its own core(s), as `bench llm --pin`")
    parser.add_argument("--insecure", action="store_true", help="agents without CURVE")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny checkpoint shape, 8 new tokens, 1 round (a smoke test)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the checkpoint and agent caches go (default: "
                        "~/.cache/edge-runtime/bench-serve, kept so reruns skip the writing)")


def _counts(text: str, flag: str) -> list[int]:
    from edge_runtime.errors import ConfigError

    try:
        out = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise ConfigError(f"{flag}: {text!r} is not a comma-separated list of integers") from None
    if not out or out[0] < 1:
        raise ConfigError(f"{flag} needs positive integers, e.g. 1,2,4")
    return out


def _shape(quick: bool) -> Any:
    from edge_runtime.llm.synthetic import REFERENCE, SyntheticShape

    if not quick:
        return REFERENCE
    return SyntheticShape(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=4,
                          vocab=512, max_position_embeddings=256)


def _label(config: Config) -> str:
    return f"{config[0]} agent(s) {config[1] or 'fp32'}"


@dataclass(frozen=True)
class StreamSample:
    """One stream of one measurement."""

    ttft_s: float  # submission → first token, as the stream's reader saw it
    scheduler_ttft_s: float  # the first token's own `seconds` (from admission)
    decode_s_per_token: float  # after the first token, the scheduler's timestamps
    token_ids: tuple[int, ...]


@dataclass(frozen=True)
class BatchSample:
    """N streams submitted at once, read to their end."""

    streams: tuple[StreamSample, ...]
    wall_s: float  # first submission → last token of any stream
    tokens: int
    steps: int  # forward steps the hub agent ran
    hub_compute_s: float
    hub_comm_s: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s


class _Reader(threading.Thread):
    """Reads one handle to its end, timestamping each token as it arrives."""

    def __init__(self, handle: Any, submitted: float) -> None:
        super().__init__(name=f"bench-reader-{handle.id}", daemon=True)
        self.handle = handle
        self.submitted = submitted
        self.arrived: list[float] = []
        self.events: list[Any] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for event in self.handle.events(TOKEN_TIMEOUT_S):
                self.arrived.append(time.perf_counter())
                self.events.append(event)
        except BaseException as error:  # handed to the main thread
            self.error = error

    def sample(self) -> StreamSample:
        if self.error is not None:
            raise self.error
        first, last = self.events[0], self.events[-1]
        decode = (last.seconds - first.seconds) / max(1, len(self.events) - 1)
        return StreamSample(self.arrived[0] - self.submitted, first.seconds, decode,
                            tuple(e.token_id for e in self.events))


def _hub_counters(llm: Any) -> tuple[int, float, float]:
    st = llm.status()[llm.hub_agent]
    return int(st["steps"]), float(st["compute_s"]), float(st["comm_s"])


def _measure(llm: Any, prompts: list[list[int]], new_tokens: int) -> BatchSample:
    """Submit every prompt at once to a fresh scheduler; read each stream on its thread."""
    from edge_runtime.sdk.scheduler import GenerationScheduler

    steps0, compute0, comm0 = _hub_counters(llm)  # this thread owns the cluster here
    scheduler = GenerationScheduler(llm).start()
    readers: list[_Reader] = []
    try:
        started = time.perf_counter()
        for prompt in prompts:  # all at once; the readers start after (well within a step)
            submitted = time.perf_counter()
            readers.append(_Reader(scheduler.submit(prompt, new_tokens, stop=[]), submitted))
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join()
    finally:
        scheduler.close(cancel=True)
    streams = tuple(r.sample() for r in readers)
    wall = max(r.arrived[-1] for r in readers) - started
    steps1, compute1, comm1 = _hub_counters(llm)
    steps = steps1 - steps0
    return BatchSample(streams, wall, sum(len(s.token_ids) for s in streams), steps,
                       (compute1 - compute0) / max(steps, 1), (comm1 - comm0) / max(steps, 1))


@dataclass
class _Deployed:
    """One configuration's deployment, its single-stream reference outputs and samples."""

    llm: Any
    alone: list[tuple[int, ...]]
    samples: dict[int, list[BatchSample]] = field(default_factory=dict)


def _deploy(cluster: Any, ckpt_dir: Path, fmt: str | None, prompts: list[list[int]],
            args: argparse.Namespace, max_batch: int, max_context: int) -> _Deployed:
    from edge_runtime.llm.engine import Generation
    from edge_runtime.sdk.scheduler import GenerationScheduler

    budgets = (plain_q4_budgets(cluster, ckpt_dir, max_context, max_batch)
               if fmt == PLAIN_Q4 else None)
    llm = cluster.deploy_llm(ckpt_dir, max_context=max_context, max_batch=max_batch,
                             threads=args.threads, memory_budget=budgets,
                             quantize=None if fmt is None else "q4")
    kernels = {name: bool(st.get("packed_kernels")) for name, st in llm.status().items()}
    print(f"  batching kernels (packed fp32 / int8 prefill twins) per agent: {kernels}",
          flush=True)
    alone: list[tuple[int, ...]] = []
    for prompt in prompts:  # before any scheduler: each prompt alone, greedy
        generation = llm.generate(prompt, args.new_tokens, stop=[])
        assert isinstance(generation, Generation)
        alone.append(generation.token_ids)
    scheduler = GenerationScheduler(llm).start()  # warm the batched path at full width
    try:
        for handle in [scheduler.submit(p, 2, stop=[]) for p in prompts]:
            handle.result(TOKEN_TIMEOUT_S)
    finally:
        scheduler.close(cancel=True)
    return _Deployed(llm, alone)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import contextlib

    import edge_runtime as er
    from edge_runtime.errors import ConfigError
    from edge_runtime.llm.synthetic import write_synthetic_checkpoint

    if args.quick:
        args.new_tokens, args.rounds = min(args.new_tokens, 8), 1
    agent_counts = _counts(args.agents, "--agents")
    stream_counts = _counts(args.streams, "--streams")
    formats = formats_of(args.variants)
    if args.new_tokens < 2 or args.rounds < 1 or args.prompt_tokens < 1:
        raise ConfigError("--new-tokens must be ≥ 2 (a decode after the first token), "
                          "--rounds and --prompt-tokens ≥ 1")
    shape = _shape(args.quick)
    workdir = args.workdir or Path("~/.cache/edge-runtime/bench-serve").expanduser()
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = workdir / (f"synthetic-{shape.hidden}x{shape.intermediate}x{shape.layers}"
                          f"-v{shape.vocab}")
    t0 = time.perf_counter()
    write_synthetic_checkpoint(ckpt_dir, shape)
    size = sum(f.stat().st_size for f in ckpt_dir.glob("*.safetensors"))
    print(f"checkpoint {ckpt_dir} ({size / 1e9:.2f} GB) ready in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)  # inherited by the agents
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    max_batch = stream_counts[-1]
    rng = np.random.default_rng(0)
    prompts = [[int(t) for t in rng.integers(3, shape.vocab, args.prompt_tokens + i % 4)]
               for i in range(max_batch)]
    need = args.prompt_tokens + 3 + args.new_tokens
    max_context = -(-need // 64) * 64
    deployed: dict[Config, _Deployed] = {}
    with contextlib.ExitStack() as stack:
        for n in agent_counts:  # one cluster per agent count, every format deployed on it
            caches = [workdir / f"agent-cache-{n}-{i}" for i in range(n)]
            cluster = stack.enter_context(er.local_cluster(
                n, cache_dirs=caches, log_level="WARNING", insecure=args.insecure,
                allow_checkpoint_dirs=[ckpt_dir]))
            if args.pin:
                pin_agents(cluster, args.threads)
            for fmt in formats:
                t1 = time.perf_counter()
                deployed[(n, fmt)] = _deploy(cluster, ckpt_dir, fmt, prompts, args,
                                             max_batch, max_context)
                print(f"{_label((n, fmt))}: deployed (max_batch {max_batch}), alone outputs "
                      f"and warm-up in {time.perf_counter() - t1:.1f} s", flush=True)
        for rnd in range(args.rounds):
            order = stream_counts if rnd % 2 == 0 else stream_counts[::-1]
            for config, dep in deployed.items():
                for count in order:
                    sample = _measure(dep.llm, prompts[:count], args.new_tokens)
                    dep.samples.setdefault(count, []).append(sample)
                    per = statistics.median(s.decode_s_per_token for s in sample.streams)
                    print(f"round {rnd + 1}/{args.rounds} {_label(config)} {count} stream(s): "
                          f"{sample.tokens_per_s:.1f} tok/s, {per * 1e3:.1f} ms/token, "
                          f"{sample.steps / args.new_tokens:.2f} steps/token", flush=True)
        for dep in deployed.values():
            dep.llm.unload()
    return _report(args, shape, size, stream_counts, max_batch, max_context, deployed)


def _row(config: Config, count: int, dep: _Deployed, new_tokens: int) -> dict[str, Any]:
    samples = dep.samples[count]
    streams = [s for b in samples for s in b.streams]
    ttfts = np.array([s.ttft_s for s in streams])
    wrong = sum(s.token_ids != dep.alone[i] for b in samples for i, s in enumerate(b.streams))
    return {
        "agents": config[0], "variant": config[1] or "fp32", "streams": count,
        "tokens_per_s": statistics.median(b.tokens_per_s for b in samples),
        "ms_per_token": 1e3 * statistics.median(s.decode_s_per_token for s in streams),
        "ttft_p50_ms": 1e3 * float(np.percentile(ttfts, 50)),
        "ttft_p99_ms": 1e3 * float(np.percentile(ttfts, 99)),
        "wait_before_first_step_p50_ms": 1e3 * statistics.median(
            s.ttft_s - s.scheduler_ttft_s for s in streams),
        "steps_per_token": statistics.median(b.steps / new_tokens for b in samples),
        "hub_compute_ms_per_step": 1e3 * statistics.median(b.hub_compute_s for b in samples),
        "hub_comm_ms_per_step": 1e3 * statistics.median(b.hub_comm_s for b in samples),
        "tokens_per_s_by_round": [b.tokens_per_s for b in samples],
        "ms_per_token_by_round": [1e3 * statistics.median(s.decode_s_per_token
                                                          for s in b.streams)
                                  for b in samples],
        "samples": len(streams),
        "streams_different_from_alone": wrong,
        "outputs_equal": wrong == 0,
    }


def _report(args: argparse.Namespace, shape: Any, size: int, stream_counts: list[int],
            max_batch: int, max_context: int,
            deployed: dict[Config, _Deployed]) -> dict[str, Any]:
    rows = [_row(config, count, dep, args.new_tokens)
            for config, dep in deployed.items() for count in stream_counts]
    ratios: list[dict[str, Any]] = []
    for config in deployed:
        mine = {r["streams"]: r for r in rows
                if (r["agents"], r["variant"]) == (config[0], config[1] or "fp32")}
        for r in mine.values():
            base = mine.get(1)
            r["tps_vs_1"] = r["tokens_per_s"] / base["tokens_per_s"] if base else None
            r["ms_vs_1"] = r["ms_per_token"] / base["ms_per_token"] if base else None
        if 1 in mine and 4 in mine:
            tps, lat = mine[4]["tps_vs_1"], mine[4]["ms_vs_1"]
            ratios.append({"agents": config[0], "variant": config[1] or "fp32",
                           "tokens_per_s_4_over_1": tps, "ms_per_token_4_over_1": lat,
                           "tokens_per_s_target_met": tps >= TPS_RATIO_TARGET,
                           "ms_per_token_target_met": lat <= LATENCY_RATIO_TARGET})
    header = ["configuration", "streams", "tok/s", "x 1 stream", "ms/token", "x 1 stream",
              "TTFT p50", "TTFT p99", "steps/tok", "equal"]
    widths = [20, 7, 8, 10, 9, 10, 9, 9, 9, 5]
    print()
    print_row(header, widths)
    for r in rows:
        print_row([f"{r['agents']} agent(s) {r['variant']}", str(r["streams"]),
                    f"{r['tokens_per_s']:.1f}", _times(r["tps_vs_1"]),
                    f"{r['ms_per_token']:.1f}", _times(r["ms_vs_1"]),
                    f"{r['ttft_p50_ms']:.0f}", f"{r['ttft_p99_ms']:.0f}",
                    f"{r['steps_per_token']:.2f}", "yes" if r["outputs_equal"] else "NO"],
                   widths)
    print(f"\ntargets at 4 streams vs 1: tokens/s ≥ {TPS_RATIO_TARGET:g}x, per-stream "
          f"ms/token ≤ {LATENCY_RATIO_TARGET:g}x")
    for q in ratios:
        print(f"  {q['agents']} agent(s) {q['variant']}: tokens/s "
              f"{q['tokens_per_s_4_over_1']:.2f}x ({_met(q['tokens_per_s_target_met'])}), "
              f"ms/token {q['ms_per_token_4_over_1']:.2f}x "
              f"({_met(q['ms_per_token_target_met'])})")
    equal = all(r["outputs_equal"] for r in rows)
    print(f"batched greedy outputs equal each prompt generated alone: {equal}")
    return {
        "suite": "serve",
        "checkpoint": {"bytes": size, "hidden": shape.hidden, "intermediate": shape.intermediate,
                       "layers": shape.layers, "heads": shape.heads, "vocab": shape.vocab},
        "quick": args.quick, "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens, "rounds": args.rounds, "streams": stream_counts,
        "max_batch": max_batch, "max_context": max_context, "threads": args.threads,
        "pin": args.pin, "insecure": args.insecure, "cpus": os.cpu_count(),
        "targets": {"tokens_per_s_4_over_1_min": TPS_RATIO_TARGET,
                    "ms_per_token_4_over_1_max": LATENCY_RATIO_TARGET},
        "rows": rows, "ratios": ratios, "outputs_equal": equal,
    }


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"
