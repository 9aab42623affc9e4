"""`bench llm --memory-limit`: each agent in a memory cgroup of its own.

Why: a memory budget is a promise the agent makes; a cgroup limit that charges the page
cache is what a device with that much RAM enforces (the kernel kills the process that
goes over). Each agent of a variant joins its own child cgroup of this process's one
(`devices.cgroup.MemoryCgroup`) right after it starts; its deployments then get the
budget an agent reads from such a limit by default (`default_memory_budget`: the limit
less the interpreter's baseline), and the table adds the cgroup's peak charge and the
kernel's OOM kills next to the agent's own peak RSS.

The kernel here (cgroup v1, 6.x) no longer moves charges with a process, so what the
agent allocated before joining (the interpreter and libraries, ~110 MB) stays charged
to the parent: the cgroup's peak counts everything the share needed (weights, KV cache,
activations, page cache of the reads).
"""

from __future__ import annotations

import os
from typing import Any

from devices.cgroup import (
    AGENT_BASELINE_BYTES,
    CgroupError,
    MemoryCgroup,
    memory_cgroups_available,
)


class AgentLimits:
    """One memory cgroup per agent process of a local cluster, removed on `close`."""

    def __init__(self, cluster: Any, limit_bytes: int, tag: str) -> None:
        self.groups: dict[str, MemoryCgroup] = {}
        for agent, proc in zip(cluster.agents, cluster.processes, strict=True):
            group = MemoryCgroup(f"er-bench-{os.getpid()}-{tag}-{proc.index}", limit_bytes)
            group.join(proc.process.pid)
            self.groups[agent.name] = group

    def peaks(self) -> dict[str, int | None]:
        return {name: g.peak_bytes() for name, g in self.groups.items()}

    def oom_kills(self) -> dict[str, int]:
        return {name: g.oom_kills() for name, g in self.groups.items()}

    def close(self) -> None:
        """Remove the cgroups (call after the agents have exited)."""
        for group in self.groups.values():
            try:
                group.remove()
            except CgroupError as exc:
                print(f"could not remove {group.path}: {exc}", flush=True)


def budget_under(limit_bytes: int) -> int:
    """What an agent under `limit_bytes` offers its deployments by default."""
    return max(0, limit_bytes - AGENT_BASELINE_BYTES)


def check_available() -> str | None:
    """None when memory cgroups can be created here, else why not."""
    return memory_cgroups_available()


__all__ = ["AgentLimits", "budget_under", "check_available"]
