"""What one look at a cluster saw: a typed record per agent, JSON for the dashboard.

Built from the agents' own answers (`status`, `profile`, a ping's round trip) plus,
when a coordinator owns the agents, its view of them (health, last heartbeat): the
same facts `edge-runtime status`, the dashboard and `/metrics` show.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from devices.profile import DeviceProfile


def profile_summary(profile: DeviceProfile | None) -> str:
    """One line a person reads: what the device is and how fast it measured."""
    if profile is None:
        return "?"
    return (f"{profile.label()}: {profile.cores} cores, {profile.gflops_fp32:.1f} GFLOPS, "
            f"{profile.mem_total_bytes / 2**30:.1f} GiB RAM, "
            f"{profile.mem_bandwidth_gbps:.1f} GB/s")


@dataclass(frozen=True)
class DeploymentRow:
    """One deployment on one agent, as the dashboard's plan lanes draw it."""

    id: str
    type: str
    memory_bytes: int
    detail: str  # "stage 1/3" or "kv heads 0-1, mlp cols 0-63, vocab 0-127"
    ready: bool
    raw: Mapping[str, Any] = field(repr=False)
    # what the agent holds, as half-open [lo, hi) ranges by dimension ("stage",
    # "kv_heads", "mlp_columns", "vocab_rows", "layers"): the dashboard draws them as lanes
    ranges: Mapping[str, tuple[int, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class AgentSnapshot:
    """One agent at one moment."""

    name: str
    address: str
    available: bool
    health: str  # "up", or the coordinator's reason it plans without the agent
    error: str | None = None  # why it did not answer, when it did not
    label: str = ""
    preset: str | None = None
    emulated: bool = False
    profile: str = "?"
    memory_used: int = 0
    memory_budget: int | None = None
    uptime_s: float = 0.0
    requests_served: int = 0
    errors_answered: int = 0
    rtt_s: float | None = None  # a ping's round trip from this machine
    last_seen_s: float | None = None  # seconds since it was last heard from
    deployments: tuple[DeploymentRow, ...] = ()

    @property
    def status_map(self) -> dict[str, Any]:
        """The agent's status as `StatusReply.to_meta()` shapes it (for `families`)."""
        return {"name": self.name, "uptime_s": self.uptime_s,
                "memory_used": self.memory_used, "memory_budget": self.memory_budget,
                "requests_served": self.requests_served,
                "errors_answered": self.errors_answered,
                "deployments": {d.id: dict(d.raw) for d in self.deployments}}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["deployments"] = [{k: v for k, v in asdict(d).items() if k != "raw"}
                               for d in self.deployments]
        return data


@dataclass(frozen=True)
class LinkRow:
    """One agent-to-agent link as the source agent measured it (a `probe_link`)."""

    source: str
    target: str
    rtt_s: float | None
    bandwidth_bytes_per_s: float | None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ClusterSnapshot:
    taken_at: float
    agents: tuple[AgentSnapshot, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"taken_at": self.taken_at, "agents": [a.to_dict() for a in self.agents]}


def _span(values: Any) -> str:
    if not isinstance(values, (list, tuple)) or not values:
        return "none"
    if len(values) == 2 and all(isinstance(v, int) for v in values):
        lo, hi = values
        return "none" if hi <= lo else str(lo) if hi - lo == 1 else f"{lo}-{hi - 1}"
    return f"{min(values)}-{max(values)}" if len(values) > 1 else str(values[0])


def deployment_row(deployment_id: str, row: Mapping[str, Any]) -> DeploymentRow:
    kind = str(row.get("type", "?"))
    ranges: dict[str, tuple[int, int]] = {}
    if "stage" in row:
        detail = f"stage {int(row['stage']) + 1}/{row.get('n_stages', '?')}"
        ranges["stage"] = (int(row["stage"]), int(row["stage"]) + 1)
    elif isinstance(row.get("share"), Mapping):
        share = row["share"]
        for key in ("kv_heads", "mlp_columns", "vocab_rows", "layers"):
            value = share.get(key)
            if (isinstance(value, (list, tuple)) and len(value) == 2
                    and all(isinstance(v, int) for v in value)):
                ranges[key] = (int(value[0]), int(value[1]))
        detail = (f"rank {row.get('rank', '?')}: kv heads {_span(share.get('kv_heads'))}, "
                  f"mlp cols {_span(share.get('mlp_columns'))}, "
                  f"vocab {_span(share.get('vocab_rows'))}")
    else:
        detail = kind
    memory = row.get("memory_bytes", 0)
    return DeploymentRow(deployment_id, kind, int(memory) if isinstance(memory, int) else 0,
                         detail, bool(row.get("ready", True)), row, ranges)


def agent_from_status(status: Mapping[str, Any], **given: Any) -> AgentSnapshot:
    """An answering agent's snapshot from its status map plus what the caller measured."""
    deployments = status.get("deployments") or {}
    budget = status.get("memory_budget")
    return AgentSnapshot(
        name=str(status.get("name", "?")),
        address=str(given.pop("address", status.get("address", ""))),
        available=True,
        preset=status.get("preset"), emulated=bool(status.get("emulated")),
        memory_used=int(status.get("memory_used", 0)),
        memory_budget=None if budget is None else int(budget),
        uptime_s=float(status.get("uptime_s", 0.0)),
        requests_served=int(status.get("requests_served", 0)),
        errors_answered=int(status.get("errors_answered", 0)),
        deployments=tuple(deployment_row(str(k), v) for k, v in sorted(deployments.items())
                          if isinstance(v, Mapping)),
        **given)


__all__ = ["AgentSnapshot", "ClusterSnapshot", "DeploymentRow", "LinkRow", "agent_from_status",
           "deployment_row", "profile_summary"]
