"""`--pin` for the benches that start agents: agent i on its own cores.

Why one module: `bench llm`, its `--strategies` runs and `bench serve` pin agents the
same way (every thread of agent i, its BLAS pool included, on cores
[i*threads, (i+1)*threads) of this process's affinity, wrapping), and distributed-llama's
nodes are given the same cores (`peer_dllama_cmd.node_cpus`), so side-by-side rows
compare like with like.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def pin_agents(cluster: Any, threads: int) -> None:
    """Give agent i cores [i*threads, (i+1)*threads) — every thread of it, BLAS pool
    included; says so and leaves them unpinned where affinity cannot be set."""
    cores = sorted(os.sched_getaffinity(0))
    for i, proc in enumerate(cluster.processes):
        mine = {cores[(i * threads + k) % len(cores)] for k in range(threads)}
        try:
            for task in Path(f"/proc/{proc.process.pid}/task").iterdir():
                os.sched_setaffinity(int(task.name), mine)
        except OSError as error:  # e.g. a sandbox without affinity control
            print(f"cannot pin agent {i}: {error}; running unpinned", flush=True)
            return


__all__ = ["pin_agents"]
