"""Which experts of a mixture-of-experts decoder each device holds (expert parallelism).

Why experts are not placed like MLP columns: a dense MLP reads every column for every
token, so a device's memory and its time per token both grow with its columns, and
columns simply follow bandwidth. A token runs only k of the E experts of a layer
(`experts_per_token`): a device holding n experts keeps all n in memory but reads,
expected over uniform routing, n·k/E of them per token. Experts are memory-heavy and
compute-light, so a slow device with room holds many of them at little cost in time,
and a fast device with little memory holds few.

`place_experts` places them one at a time (they are identical jobs): each goes to the
device whose expected time per token after taking it is lowest — its fixed part
(attention, router, LM head: `base_s`) plus one more expert's expected read
(`expert_s`) — among the devices with room for another (`room`, whole experts under the
memory budget; None = unlimited). For identical jobs on machines of different speeds
this greedy rule minimises the largest time (the token waits for the slowest device).
A device may get none. When the budgets cannot hold every expert, `overflow=True` keeps
placing the rest by time alone (those devices then stream through their window) and
`overflow=False` raises `InfeasiblePlanError`.

Pure: standard library only.
"""

from __future__ import annotations

from collections.abc import Sequence

from partitioner.errors import InfeasiblePlanError, PartitionError


def place_experts(
    n_experts: int,
    base_s: Sequence[float],
    expert_s: Sequence[float],
    room: Sequence[int | None] | None = None,
    *,
    overflow: bool = False,
) -> list[int]:
    """How many experts each device holds; see the module docstring."""
    n = len(base_s)
    if n == 0 or len(expert_s) != n or n_experts < 0:
        raise PartitionError(f"cannot place {n_experts} experts with {len(base_s)} base times "
                             f"and {len(expert_s)} expert times")
    if any(t <= 0 for t in expert_s):
        raise PartitionError("every device needs a positive time per expert; re-profile it")
    caps = list(room) if room is not None else [None] * n
    if len(caps) != n:
        raise PartitionError(f"{len(caps)} expert capacities for {n} devices")
    counts = [0] * n
    for _ in range(n_experts):
        free = [i for i in range(n) if caps[i] is None or counts[i] < (caps[i] or 0)]
        if not free:
            if not overflow:
                held = sum(c or 0 for c in caps)
                raise InfeasiblePlanError(
                    f"the devices' memory budgets hold {held} of the {n_experts} experts of "
                    "each layer: raise --memory-budget, add devices, or plan with "
                    "streaming=True (sliding window)")
            free = list(range(n))
        best = min(free, key=lambda i: (base_s[i] + (counts[i] + 1) * expert_s[i], i))
        counts[best] += 1
    return counts


def expert_room(free_bytes: float, bytes_per_expert: int) -> int:
    """Whole experts (every layer's copy of each) that `free_bytes` of a budget hold."""
    if bytes_per_expert <= 0:
        raise PartitionError(f"an expert of {bytes_per_expert} bytes is not plausible")
    return max(0, int(free_bytes // bytes_per_expert))


def expert_ranges(counts: Sequence[int]) -> list[tuple[int, int]]:
    """Contiguous expert index ranges [start, end), in device order."""
    out, start = [], 0
    for n in counts:
        out.append((start, start + n))
        start += n
    return out


__all__ = ["expert_ranges", "expert_room", "place_experts"]
