"""`Agents`: the connected agents of a cluster and one typed request/reply to each.

Why a module below `cluster.py`: deploying a model (`deploy.py`, `whole_file.py`),
running it (`deployment.py`) and the LLM modules need the hub, the agents' hello
records, one request to one agent, and the measured links — not `Cluster` itself,
which sits on top and imports them. So no SDK module imports one above it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from devices.links import LinkProfile
from devices.profile import DeviceProfile
from edge_runtime.errors import AgentError, AgentUnavailableError, ConfigError
from edge_runtime.protocol import (
    Deploy,
    ProbeLink,
    ProbeLinkReply,
    Record,
    Status,
    StatusReply,
    Unload,
)
from edge_runtime.sdk.config import Timeouts
from edge_runtime.sdk.errors_map import error_from_frame
from edge_runtime.sdk.hub import AgentLink, Hub
from transports.errors import ProtocolError

log = logging.getLogger(__name__)

R = TypeVar("R", bound=Record)


@dataclass(frozen=True)
class AgentInfo:
    """One agent as its hello described it. `profile.name` is the agent's unique name."""

    name: str
    address: str
    public_key: str | None
    profile: DeviceProfile
    preset: str | None
    emulated: bool
    label: str
    backends: tuple[str, ...]
    memory_budget: int | None
    pid: int


def parse_reply(reply_type: type[R], meta: object, agent: str, kind: str) -> R:
    """`reply_type` decoded from a reply's meta; an agent speaking another protocol
    version (or a broken one) is an `AgentError` naming it."""
    try:
        return reply_type.from_meta(meta)
    except ProtocolError as error:
        raise AgentError(f"malformed reply to {kind}: {error.reason}; run the same "
                         "edge-runtime release on the agents and here", agent=agent) from None


class Agents:
    """The agents of one cluster, by name, over one hub."""

    def __init__(self, hub: Hub, links: list[AgentLink], infos: list[AgentInfo]) -> None:
        self._hub = hub
        self._links = {info.name: link for info, link in zip(infos, links, strict=True)}
        self.agents: tuple[AgentInfo, ...] = tuple(infos)
        self._measured_links: list[LinkProfile] | None = None

    @property
    def hub(self) -> Hub:
        return self._hub

    @property
    def timeouts(self) -> Timeouts:
        return self._hub.timeouts

    def link(self, name: str) -> AgentLink:
        try:
            return self._links[name]
        except KeyError:
            raise ConfigError(
                f"no agent named {name!r} in this cluster (agents: {sorted(self._links)})"
            ) from None

    def info(self, name: str) -> AgentInfo:
        for info in self.agents:
            if info.name == name:
                return info
        raise ConfigError(f"no agent named {name!r} in this cluster")

    def call(self, name: str, request: Record, reply_type: type[R],
             tensors: Mapping[str, np.ndarray] | None = None,
             timeout_s: float | None = None) -> R:
        """One request to agent `name`; its typed reply, or the typed error it answered.

        A deployment this session loads (or unloads) is registered with the lease
        keeper, whose renewals then ask the agent about it (`LeaseKeeper.gone`)."""
        link = self.link(name)
        if timeout_s is None and isinstance(request, Unload):
            timeout_s = self.timeouts.deploy_s  # queued behind other deploys on that agent
        if isinstance(request, Unload):  # gone either way: renewals stop asking about it
            self._hub.leases.untrack(request.deployment_id)
        frame = self._hub.request(link, request.KIND, request.to_meta(), dict(tensors or {}),
                                  timeout_s)
        if frame.is_error:
            raise error_from_frame(frame, name)
        reply = parse_reply(reply_type, frame.meta, name, request.KIND)
        if isinstance(request, Deploy):
            self._hub.leases.track(link.address, request.deployment_id)
        return reply

    def status(self) -> dict[str, dict[str, Any]]:
        """Each agent's status (deployments, memory, emulation); unreachable ones say so."""
        table: dict[str, dict[str, Any]] = {}
        for info in self.agents:
            try:
                table[info.name] = self.call(info.name, Status(), StatusReply).to_meta()
                table[info.name]["available"] = True
            except (AgentUnavailableError, AgentError) as error:
                table[info.name] = {"name": info.name, "available": False, "error": str(error)}
            table[info.name]["label"] = info.label
        return table

    def deployment_status(self, name: str, deployment_id: str) -> Any:
        """What agent `name` reports about one deployment (None if it has no such one)."""
        return self.call(name, Status(), StatusReply).deployments.get(deployment_id)

    def links(self, refresh: bool = False) -> list[LinkProfile]:
        """Measured links between every pair of agents (agent-to-agent probes; cached)."""
        if self._measured_links is not None and not refresh:
            return self._measured_links
        found: list[LinkProfile] = []
        for i, src in enumerate(self.agents):
            for dst in self.agents[i + 1:]:
                probe = ProbeLink(address=dst.address, public_key=dst.public_key, name=dst.name)
                link = self.call(src.name, probe, ProbeLinkReply,
                                 timeout_s=self.timeouts.probe_s).link
                log.info("link %s -> %s: rtt %.3f ms, %.1f MB/s", src.name, dst.name,
                         link.rtt_s * 1e3, link.bandwidth_bytes_per_s / 1e6)
                found.append(link)
        self._measured_links = found
        return found


__all__ = ["AgentInfo", "Agents", "parse_reply"]
