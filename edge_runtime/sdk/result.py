"""`Result`: what one inference returns, with where its time went.

A result carries the outputs, the exit that answered (None = the model's last
stage), the per-stage timing the agents measured, the latency the coordinator
measured end to end, and the plan's prediction for the same request, so an
app can compare prediction and measurement without another tool. It also says
which path answered (`served_by`: the cluster, this device, a cloud target),
whether that answer is `degraded` (an early exit chosen for memory), and how many
attempts it took (a failover re-runs a request from its inputs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edge_runtime.protocol import StageTiming
from edge_runtime.trace.model import Trace


@dataclass(frozen=True)
class Result:
    """One inference's outputs and timing."""

    outputs: dict[str, np.ndarray]
    exit: str | None
    stage: int  # index of the stage that answered
    latency_s: float  # coordinator send → result received
    stages: tuple[StageTiming, ...] = ()
    predicted_latency_s: float | None = None
    predicted_stages: tuple[float, ...] = field(default=())  # compute + transfer per stage
    request_id: int = 0  # the wire id of the attempt that answered
    served_by: str = "cluster"  # "cluster", "local", or a fallback target's name
    degraded: bool = False  # lower quality than the deployed model (see `notes`)
    attempts: int = 1  # 1 + the times a failover re-sent it
    key: str = ""  # the request's key (journal / idempotency), "" when not journaled
    notes: tuple[str, ...] = ()  # why degraded or how it was recovered, in words
    trace: Trace | None = None  # spans on every device, with `run(..., trace=True)`

    @property
    def fallback(self) -> bool:
        """True when something other than the cluster answered."""
        return self.served_by != "cluster"

    def __getitem__(self, name: str) -> np.ndarray:
        return self.outputs[name]

    @property
    def compute_s(self) -> float:
        return sum(s.compute_s for s in self.stages)

    @property
    def transfer_s(self) -> float:
        return sum(s.transfer_s for s in self.stages)

    @property
    def queue_s(self) -> float:
        return sum(s.queue_s for s in self.stages)

    def per_device(self) -> dict[str, dict[str, float]]:
        """compute/transfer/queue seconds summed per agent name."""
        table: dict[str, dict[str, float]] = {}
        for s in self.stages:
            row = table.setdefault(s.agent, {"compute_s": 0.0, "transfer_s": 0.0, "queue_s": 0.0})
            row["compute_s"] += s.compute_s
            row["transfer_s"] += s.transfer_s
            row["queue_s"] += s.queue_s
        return table
