"""Agents and timing helpers of `edge-runtime bench pipeline` (its parts share them).

Why apart: the overhead and throughput parts each start real agent processes and time
variants side by side; one place starts, pins and stops agents, and alternates calls.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

AGENT_START_S = 90.0
"""How long a started agent may take to write its ready file (imports + a first
self-profile, which is cached for a day after)."""


# --- agents -------------------------------------------------------------------


@contextlib.contextmanager
def started_agents(
    count: int, threads: int, pin: bool, workdir: Path, insecure: bool = False,
    first_core: int = 0,
) -> Iterator[Any]:
    """`count` real agent processes with CURVE keys made for this run, as one `Cluster`
    (`insecure`: no CURVE, to measure what encryption costs). Pinned agents take the
    cores from `first_core` on, so two clusters measured side by side do not share."""
    import edge_runtime as er
    from edge_runtime.errors import AgentUnavailableError
    from transports.keys import init_keys, trust

    coordinator = init_keys(workdir / "coordinator")
    cores = sorted(os.sched_getaffinity(0))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        readies = []
        for i in range(count):
            keys = workdir / f"keys-{i}"
            init_keys(keys)
            trust(keys, coordinator.public, "coordinator")
            ready = workdir / f"ready-{i}.json"
            command = [sys.executable, "-m", "edge_runtime.cli.main", "--log-level", "WARNING",
                       "agent", "--listen", "tcp://127.0.0.1:0", "--name", f"agent{i}",
                       "--threads", str(threads), "--cache-dir", str(workdir / f"cache-{i}"),
                       "--ready-file", str(ready)]  # fmt: skip
            command += ["--insecure"] if insecure else ["--keys", str(keys)]
            if pin:
                command = ["taskset", "-c", str(cores[(first_core + i) % len(cores)]),
                           *command]
            log_file = (workdir / f"agent-{i}.log").open("wb")
            procs.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log_file))
            log_file.close()
            readies.append(ready)
        deadline = time.monotonic() + AGENT_START_S
        while not all(r.exists() for r in readies):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                logs = [
                    (workdir / f"agent-{i}.log").read_text(errors="replace") for i in range(count)
                ]
                tail = "\n".join(text.strip().splitlines()[-1] for text in logs if text.strip())
                raise AgentUnavailableError(f"an agent of the benchmark did not start: {tail}")
            time.sleep(0.05)
        infos = [json.loads(r.read_text()) for r in readies]
        addresses = [i["address"] for i in infos]
        if insecure:
            cluster = er.connect(addresses, insecure=True)
        else:
            cluster = er.connect(addresses, keys=workdir / "coordinator",
                                 server_keys=[i["public_key"] for i in infos])  # fmt: skip
        with cluster:
            yield cluster
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


# --- measuring ------------------------------------------------------------------


def median_ms(samples: list[float]) -> float:
    return float(np.median(samples) * 1e3)


def alternate(
    variants: dict[str, Callable[[], None]], rounds: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds per call of each variant, calls interleaved so noise hits all alike."""
    for _ in range(warmup):
        for call in variants.values():
            call()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, call in variants.items():
            started = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - started)
    return times


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    line = "  ".join(
        f"{h:>{w}}" if i else f"{h:<{w}}"
        for i, (h, w) in enumerate(zip(header, widths, strict=True))
    )
    print(line)
    print("-" * len(line))
    for row in rows:
        print(
            "  ".join(
                f"{c:>{w}}" if i else f"{c:<{w}}"
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )



def equal_flop_cuts(graph: Any, parts: int) -> list[int]:
    """Cut positions that split the model's FLOPs into `parts` nearly equal shares."""
    flops = np.array([node.flops for node in graph.nodes], dtype=np.float64)
    cumulative = np.concatenate([[0.0], np.cumsum(flops)])
    allowed = np.flatnonzero(graph.cuttable()[1:-1]) + 1
    cuts: list[int] = []
    for k in range(1, parts):
        target = cumulative[-1] * k / parts
        best = int(allowed[np.argmin(np.abs(cumulative[allowed] - target))])
        if best not in cuts and (not cuts or best > cuts[-1]):
            cuts.append(best)
    return cuts


def caller(deployment: Any, feeds: dict[str, np.ndarray]) -> Callable[[], None]:
    def call() -> None:
        deployment.run(feeds)

    return call



__all__ = ["AGENT_START_S", "alternate", "caller", "equal_flop_cuts", "median_ms",
           "print_table", "started_agents"]
