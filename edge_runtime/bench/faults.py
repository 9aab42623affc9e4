"""`edge-runtime bench faults`: detection, failover and nothing lost, with real agents.

Why: the runtime promises that an agent dying or hanging mid-stream costs time, never
answers — each request answered exactly once, in order, and an LLM's token stream with
no gap and no duplicate. This suite measures what that costs and checks the promise on
every run, for both kinds of deployment:

- pipeline: the multi-exit digits CNN (`examples/digits/`) with strategy="pipeline" over
  three `local_cluster` agents; one `run_many` of keyed requests;
- llm: the tinylm checkpoint (`examples/tinylm/`) tensor-parallel over three agents; a
  stream of keyed greedy generations (`--new-tokens` each, cycling over four prompts),
  each compared token by token with an uninterrupted run of the same prompt made before
  the fault on the same deployment.

Each stream runs `--phase-s` before the fault, then on through the window containing it
and `--phase-s` more (it is fed by time, not by a count fixed in advance, so a slow or
busy machine still gets all three windows); N is the number of requests it sent.

Faults (`--faults`), injected by a timer thread `--phase-s` after the stream starts,
wherever the stream then is — mostly while the coordinator waits on the agents, so
mid-request (mid-step for the LLM) with requests in flight (`fault_timing.py` injects
them and says how detection, recovery and throughput are taken from the stream):

- kill: SIGKILL to a middle-stage agent (a non-hub member for the LLM), with the
  coordinator's process handles dropped so it must find the loss on the wire, exactly as
  with `er.connect()` to real devices (missed heartbeats, the connection monitor);
- stop: SIGSTOP (a hung device: its TCP connection stays up, only heartbeats go silent);
- kill-local: SIGKILL with `local_cluster`'s process handle kept (a child's exit is seen
  within one heartbeat interval): the floor of detection, so recovery stands alone.

What is checked (the figures of time are `fault_timing.py`'s):

- lost / duplicated: by request key — every key sent must come back exactly once
  (in order for `run_many`); wrong: answers that differ from onnxruntime running the
  whole model; for the LLM, per generation: stream positions missing or repeated, and
  the token ids against the uninterrupted run (difflib: tokens missing = lost, tokens
  inserted = duplicated, tokens replaced = different).

Timeouts are the library's defaults (`er.Timeouts()`: heartbeat every 1 s, 3 s of
silence = lost, 30 s per request) unless `--timeouts field=value,...` says otherwise;
`--quick` uses heartbeats every 0.25 s and 1 s of silence, a 1 s collective timeout,
short phases and the kill fault only (for the test suite). Benchmarks measure; they do
not assert — the JSON says what was lost, and a test checks it is nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import itertools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.bench.fault_timing import Fault, stream_timing

FAULTS = ("kill", "stop", "kill-local")
WORKLOADS = ("pipeline", "llm")
AGENTS = 3
PROMPTS = ("Permission is hereby granted", "THE SOFTWARE IS PROVIDED",
           "The above copyright notice", "This program is free software")
LLM_MAX_CONTEXT = 128
WARMUP = 20  # pipeline requests before the measured stream (sessions warm, sockets up)
QUICK_TIMEOUTS = "heartbeat_interval_s=0.25,heartbeat_timeout_s=1.0,request_s=10"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workloads", default="pipeline,llm",
                        help="which deployments to fault: pipeline, llm (comma list)")
    parser.add_argument("--faults", default="kill,stop,kill-local",
                        help="faults to inject: kill, stop, kill-local (comma list)")
    parser.add_argument("--rounds", type=int, default=1, help="runs of every scenario")
    parser.add_argument("--phase-s", type=float, default=2.0,
                        help="seconds of steady stream before the fault and after the window")
    parser.add_argument("--window-s", type=float, default=None,
                        help="the window containing the fault (default: heartbeat timeout + 2 s)")
    parser.add_argument("--timeouts", default="",
                        help="er.Timeouts overrides, e.g. heartbeat_timeout_s=10,"
                        "heartbeat_interval_s=2 (default: the library's defaults)")
    parser.add_argument("--max-in-flight", type=int, default=8, help="run_many's window")
    parser.add_argument("--new-tokens", type=int, default=48, help="tokens per generation")
    parser.add_argument("--collective-timeout-s", type=float, default=None,
                        help="how long LLM agents wait for each other inside a step "
                        "(default: the library's, 10 s)")
    parser.add_argument("--journal", action="store_true",
                        help="journal every request (SQLite, synchronous commits) and check "
                        "the journal after the run")
    parser.add_argument("--quick", action="store_true",
                        help="a fast check: kill only, 0.5 s phases, heartbeats every 0.25 s "
                        "with 1 s of silence = lost, 1 s collective timeout, a 1.5 s window, "
                        "24 tokens per generation")


# --- options -------------------------------------------------------------------------


def _timeouts(text: str) -> Any:
    """`er.Timeouts` (with the environment's overrides) and `field=value` pairs on top."""
    from edge_runtime.envconfig import with_env_overrides
    from edge_runtime.errors import ConfigError
    from edge_runtime.sdk.config import SDK_ENV_PREFIX, Timeouts

    names = {f.name for f in dataclasses.fields(Timeouts)}
    given: dict[str, str] = {}
    for item in (x.strip() for x in text.split(",") if x.strip()):
        name, sep, value = item.partition("=")
        if not sep or name.strip() not in names:
            raise ConfigError(f"--timeouts: {item!r} is not FIELD=SECONDS with FIELD one of "
                              f"{sorted(names)}")
        given[SDK_ENV_PREFIX + name.strip().upper()] = value.strip()
    return with_env_overrides(Timeouts.from_env(), SDK_ENV_PREFIX, given)


def _choices(text: str, allowed: Sequence[str], flag: str) -> list[str]:
    from edge_runtime.errors import ConfigError

    chosen = list(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
    bad = [x for x in chosen if x not in allowed]
    if bad or not chosen:
        raise ConfigError(f"{flag}: use one or more of {', '.join(allowed)} (got {text!r})")
    return chosen


# --- a cluster for one scenario -------------------------------------------------------


@contextlib.contextmanager
def _cluster(args: argparse.Namespace, timeouts: Any, fault: str,
             workdir: Path) -> Iterator[Any]:
    import edge_runtime as er

    journal = workdir / "requests.db" if args.journal else None
    with er.local_cluster(AGENTS, timeouts=timeouts, log_level="WARNING",
                          journal=journal) as cluster:
        if fault != "kill-local":  # as with er.connect(): the loss must be found on the wire
            for info in cluster.agents:
                cluster.link(info.name).alive = None
        yield cluster


def _journal_counts(cluster: Any) -> dict[str, int] | None:
    return None if cluster.journal is None else dict(cluster.journal.counts())


# --- pipeline ------------------------------------------------------------------------


def _pipeline(args: argparse.Namespace, timeouts: Any, kind: str, window_s: float,
              workdir: Path) -> dict[str, Any]:
    import onnxruntime as ort

    from edge_runtime.demo.assets import MODEL_FILE, TEST_FILE, find_assets, load_split

    assets = find_assets()
    images = load_split(assets / TEST_FILE).images
    session = ort.InferenceSession(str(assets / MODEL_FILE), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    want = dict(zip(names, session.run(None, {"image": images}), strict=True))

    def feeds(count: int) -> Iterator[dict[str, np.ndarray]]:
        for i in range(count):
            yield {"image": images[i % len(images)][None]}

    with _cluster(args, timeouts, kind, workdir) as cluster:
        model = cluster.deploy(assets / MODEL_FILE, strategy="pipeline")
        before_agents = list(model.agents)
        fault = Fault(kind, before_agents[len(before_agents) // 2])
        list(model.run_many(feeds(WARMUP), max_in_flight=args.max_in_flight))
        sent: list[str] = []

        def requests() -> Iterator[dict[str, np.ndarray]]:
            """Requests until `--phase-s` after the fault's window (keys in step)."""
            while not fault.over(args.phase_s, window_s):
                sent.append(f"r{len(sent)}")
                yield {"image": images[(len(sent) - 1) % len(images)][None]}

        times: list[float] = []
        got: list[str] = []
        wrong = resent = 0
        served: set[str] = set()
        started = fault.arm(cluster, args.phase_s)
        try:
            for result in model.run_many(requests(), max_in_flight=args.max_in_flight,
                                         keys=(f"r{i}" for i in itertools.count())):
                now = time.monotonic()
                times.append(now)
                fault.received(cluster, now)
                got.append(result.key)
                resent += result.attempts > 1
                served.add(result.served_by)
                i = int(result.key[1:]) % len(images)  # the answer must be its key's
                if not result.outputs or any(
                        not np.allclose(value[0], want[name][i], rtol=1e-4, atol=1e-4)
                        for name, value in result.outputs.items()):
                    wrong += 1
            timing = stream_timing(cluster, fault, started, times, window_s)
            journal = _journal_counts(cluster)
        finally:
            fault.disarm(cluster)
        delivered = set(got)
        return {
            "workload": "pipeline", "fault": kind, "unit": "requests/s",
            "agents_before": before_agents, "agents_after": list(model.agents),
            "failovers": model.failovers, "warmup_requests": WARMUP, "requests": len(sent),
            "delivered": len(got),
            "lost": len(set(sent) - delivered), "duplicated": len(got) - len(delivered),
            "out_of_order": got != sent[:len(got)], "wrong": wrong, "resent": resent,
            "served_by": sorted(served), "journal": journal, **timing,
        }


# --- llm ------------------------------------------------------------------------------


def _token_diff(want: Sequence[int], got: Sequence[int]) -> dict[str, int]:
    """Tokens of the uninterrupted run missing from `got`, extra in it, and replaced."""
    counts = {"lost": 0, "duplicated": 0, "different": 0}
    matcher = difflib.SequenceMatcher(a=list(want), b=list(got), autojunk=False)
    for op, a0, a1, b0, b1 in matcher.get_opcodes():
        if op == "delete":
            counts["lost"] += a1 - a0
        elif op == "insert":
            counts["duplicated"] += b1 - b0
        elif op == "replace":
            counts["different"] += max(a1 - a0, b1 - b0)
    return counts


def _llm(args: argparse.Namespace, timeouts: Any, kind: str, window_s: float,
         workdir: Path) -> dict[str, Any]:
    from edge_runtime.demo.generation import find_checkpoint

    with _cluster(args, timeouts, kind, workdir) as cluster:
        llm = cluster.deploy_llm(find_checkpoint(), max_context=LLM_MAX_CONTEXT,
                                 collective_timeout_s=args.collective_timeout_s)
        before_agents = list(llm.agents)
        fault = Fault(kind, next(n for i, n in enumerate(before_agents) if i != llm.plan.hub))
        reference = {p: list(llm.generate(p, args.new_tokens, stop=[]).token_ids)
                     for p in PROMPTS}
        times: list[float] = []
        stats = {"lost": 0, "duplicated": 0, "different": 0}
        keys: list[str] = []
        delivered: list[str] = []
        positions_missing = positions_repeated = generations_differing = 0
        started = fault.arm(cluster, args.phase_s)
        try:
            while not fault.over(args.phase_s, window_s):
                key = f"g{len(keys)}"
                prompt = PROMPTS[len(keys) % len(PROMPTS)]
                keys.append(key)
                ids, indices = [], []
                for event in llm.generate(prompt, args.new_tokens, stop=[], stream=True,
                                          key=key):
                    now = time.monotonic()
                    times.append(now)
                    fault.received(cluster, now)
                    ids.append(event.token_id)
                    indices.append(event.index)
                delivered.append(key)
                positions_missing += len(set(range(args.new_tokens)) - set(indices))
                positions_repeated += len(indices) - len(set(indices))
                diff = _token_diff(reference[prompt], ids)
                generations_differing += any(diff.values())
                for name, value in diff.items():
                    stats[name] += value
            timing = stream_timing(cluster, fault, started, times, window_s)
            journal = _journal_counts(cluster)
        finally:
            fault.disarm(cluster)
        return {
            "workload": "llm", "fault": kind, "unit": "tokens/s",
            "agents_before": before_agents, "agents_after": list(llm.agents),
            "failovers": llm.failovers, "replays": llm.runner.replays,
            "warmup_requests": len(PROMPTS), "requests": len(keys), "delivered": len(delivered),
            "lost": len(set(keys) - set(delivered)),
            "duplicated": len(delivered) - len(set(delivered)),
            "out_of_order": delivered != keys[:len(delivered)],
            "tokens": len(times), "tokens_per_generation": args.new_tokens,
            "positions_missing": positions_missing, "positions_repeated": positions_repeated,
            "tokens_lost": stats["lost"], "tokens_duplicated": stats["duplicated"],
            "tokens_different": stats["different"], "wrong": generations_differing,
            "ids_equal_uninterrupted": generations_differing == 0, "journal": journal,
            **timing,
        }


# --- the suite -----------------------------------------------------------------------


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _print_table(rows: list[dict[str, Any]]) -> None:
    header = ["workload", "fault", "detect s", "recover s", "before", "during", "after",
              "unit", "max gap s", "N", "lost", "dup", "wrong"]
    widths = [8, 10, 8, 9, 7, 7, 7, 10, 9, 5, 4, 3, 5]
    print("\n" + "  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    for row in rows:
        flow = row["throughput"]
        lost = row["lost"] + row.get("tokens_lost", 0) + row.get("positions_missing", 0)
        dup = (row["duplicated"] + row.get("tokens_duplicated", 0)
               + row.get("positions_repeated", 0))
        cells = [row["workload"], row["fault"], _cell(row["detect_s"], ".2f"),
                 _cell(row["recover_s"], ".2f"), _cell(flow["before"], ".0f"),
                 _cell(flow["during"], ".0f"), _cell(flow["after"], ".0f"), row["unit"],
                 _cell(row["max_gap_after_s"], ".2f"), str(row["requests"]), str(lost),
                 str(dup), str(row["wrong"])]
        print("  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)), flush=True)
    print("\ndetect = signal → coordinator marks the agent lost; recover = that mark → first "
          "result after the failover; before/during/after = throughput before the signal, in "
          "the window from it, after the window; lost/dup = request keys (and LLM tokens) "
          "missing / answered twice; wrong = answers differing from onnxruntime (pipeline) "
          "or generations differing from the uninterrupted run (llm)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from edge_runtime.errors import ConfigError

    if args.quick:
        args.faults, args.phase_s, args.new_tokens = "kill", 0.5, 24
        args.collective_timeout_s = args.collective_timeout_s or 1.0
        args.window_s = args.window_s or 1.5
        args.timeouts = ",".join(x for x in (QUICK_TIMEOUTS, args.timeouts) if x)
    workloads = _choices(args.workloads, WORKLOADS, "--workloads")
    faults = _choices(args.faults, FAULTS, "--faults")
    if args.rounds < 1 or args.phase_s <= 0 or args.max_in_flight < 1 or not (
            4 <= args.new_tokens <= LLM_MAX_CONTEXT - 32):
        raise ConfigError(f"bad options: --rounds ≥ 1, --phase-s > 0, --max-in-flight ≥ 1, "
                          f"4 ≤ --new-tokens ≤ {LLM_MAX_CONTEXT - 32}")
    timeouts = _timeouts(args.timeouts)
    window_s = args.window_s if args.window_s is not None else timeouts.heartbeat_timeout_s + 2.0
    print(f"timeouts: heartbeat every {timeouts.heartbeat_interval_s:g} s, lost after "
          f"{timeouts.heartbeat_timeout_s:g} s of silence, request {timeouts.request_s:g} s, "
          f"rejoin backoff {timeouts.rejoin_backoff_s:g}–{timeouts.rejoin_backoff_max_s:g} s; "
          f"{AGENTS} agents, fault after {args.phase_s:g} s, window {window_s:g} s", flush=True)
    rows: list[dict[str, Any]] = []
    for rnd in range(args.rounds):
        for workload in workloads:
            for kind in faults:
                began = time.monotonic()
                with tempfile.TemporaryDirectory(prefix="edge-runtime-bench-faults-") as tmp:
                    measure = _pipeline if workload == "pipeline" else _llm
                    row = measure(args, timeouts, kind, window_s, Path(tmp))
                row["round"] = rnd + 1
                rows.append(row)
                print(f"round {rnd + 1}/{args.rounds} {workload} {kind}: {row['victim']} "
                      f"lost after {_cell(row['detect_s'], '.2f')} s, first result "
                      f"{_cell(row['recover_s'], '.2f')} s later; {row['delivered']}/"
                      f"{row['requests']} delivered ({time.monotonic() - began:.0f} s)",
                      flush=True)
    _print_table(rows)
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
               if not k.startswith("_")}
    detect = [r["detect_s"] for r in rows if r["detect_s"] is not None]
    return {
        "suite": "faults", "command": " ".join(sys.argv), "options": options,
        "cpus": os.cpu_count(), "timeouts": dataclasses.asdict(timeouts), "window_s": window_s,
        "scenarios": rows,
        "summary": {
            "lost": sum(r["lost"] + r.get("tokens_lost", 0) + r.get("positions_missing", 0)
                        for r in rows),
            "duplicated": sum(r["duplicated"] + r.get("tokens_duplicated", 0)
                              + r.get("positions_repeated", 0) for r in rows),
            "wrong": sum(r["wrong"] for r in rows),
            "undetected": sum(r["detect_s"] is None for r in rows),
            "median_detect_s": statistics.median(detect) if detect else None,
        },
    }
