"""`--pin` for the benches that start agents: agent i on its own cores.

Why one module: `bench llm`, its `--strategies` runs and `bench serve` pin agents the
same way (every thread of agent i, its BLAS pool included, on `agent_cores(...)[i]`),
distributed-llama's nodes are given the same cores (`peer_dllama_cmd.node_cpus`), and
the pipeline benches start their pinned processes after the same spare core, so
side-by-side rows compare like with like.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def first_spare_core(needed: int, allowed: int | None = None) -> int:
    """Where pinned processes start among the `allowed` cores (this process's, by
    default): 1 when there are more than `needed`, else 0. The first allowed core (core
    0 on most hosts) takes most of the interrupts: a tensor-parallel member pinned there
    is the group's straggler (on the 16-core host, agent 0 of 8 computed 26.3 ms per
    fp32 token where the others took 21.0-22.8), and every member waits for the slowest
    at each allreduce."""
    if allowed is None:
        allowed = len(os.sched_getaffinity(0))
    return 1 if allowed > needed else 0


def agent_cores(count: int, threads: int, cores: list[int]) -> list[list[int]]:
    """The cores of each of `count` agents of `threads` cores each, out of `cores`
    (sorted): consecutive ones from the first spare core, wrapping when too few."""
    skip = first_spare_core(count * threads, len(cores))
    return [sorted({cores[(skip + i * threads + k) % len(cores)] for k in range(threads)})
            for i in range(count)]


def pin_agents(cluster: Any, threads: int) -> None:
    """Give agent i the cores `agent_cores` names for it — every thread of it, BLAS pool
    included; says so and leaves them unpinned where affinity cannot be set."""
    cores = agent_cores(len(cluster.processes), threads, sorted(os.sched_getaffinity(0)))
    for i, proc in enumerate(cluster.processes):
        try:
            for task in Path(f"/proc/{proc.process.pid}/task").iterdir():
                os.sched_setaffinity(int(task.name), cores[i])
        except OSError as error:  # e.g. a sandbox without affinity control
            print(f"cannot pin agent {i}: {error}; running unpinned", flush=True)
            return


__all__ = ["agent_cores", "first_spare_core", "pin_agents"]
