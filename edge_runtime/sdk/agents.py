"""`Agents`: the connected agents of a cluster and one typed request/reply to each.

Why a module below `cluster.py`: deploying a model (`deploy.py`, `whole_file.py`),
running it (`deployment.py`) and the LLM modules need the hub, the agents' hello
records, one request to one agent, and the measured links — not `Cluster` itself,
which sits on top and imports them. So no SDK module imports one above it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np
import zmq

from devices.links import LinkProfile
from edge_runtime.errors import AgentError, AgentUnavailableError, ConfigError
from edge_runtime.protocol import (
    Deploy,
    HelloReply,
    ProbeLink,
    ProbeLinkReply,
    Record,
    Status,
    StatusReply,
    Unload,
)
from edge_runtime.sdk.agent_link import AgentLink
from edge_runtime.sdk.config import Timeouts
from edge_runtime.sdk.errors_map import error_from_frame
from edge_runtime.sdk.health import Health
from edge_runtime.sdk.hub import Hub
from edge_runtime.sdk.info import AgentInfo, parse_reply
from edge_runtime.sdk.membership import (
    agent_info,
    hello,
    hello_reply,
    hello_request,
    introduce,
)
from transports.errors import SecurityError

log = logging.getLogger(__name__)

R = TypeVar("R", bound=Record)


class Agents:
    """The agents of one cluster, by name, over one hub."""

    def __init__(self, hub: Hub, links: list[AgentLink], infos: list[AgentInfo]) -> None:
        self._hub = hub
        self._links = {info.name: link for info, link in zip(infos, links, strict=True)}
        self.agents: tuple[AgentInfo, ...] = tuple(infos)
        self._measured: dict[tuple[str, str], LinkProfile] = {}
        self.health = Health(hub.timeouts, self._links)
        self._knocks: dict[str, tuple[int, float]] = {}  # hellos sent to lost agents

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
        """Each agent's status (deployments, memory, emulation); unreachable ones say so, and
        `health` says whether the coordinator plans on it ("up", lost or banned, and when
        it is tried again)."""
        table: dict[str, dict[str, Any]] = {}
        for info in self.agents:
            try:
                table[info.name] = self.call(info.name, Status(), StatusReply).to_meta()
                table[info.name]["available"] = True
            except (AgentUnavailableError, AgentError) as error:
                table[info.name] = {"name": info.name, "available": False, "error": str(error)}
            table[info.name]["label"] = info.label
            table[info.name]["health"] = self.health.summary().get(info.name, "up")
        return table

    def deployment_status(self, name: str, deployment_id: str) -> Any:
        """What agent `name` reports about one deployment (None if it has no such one)."""
        return self.call(name, Status(), StatusReply).deployments.get(deployment_id)

    def links(self, refresh: bool = False) -> list[LinkProfile]:
        """Measured links between every pair of usable agents (agent-to-agent probes;
        each pair measured once and cached; a lost agent's pairs wait until it is back)."""
        if refresh:
            self._measured.clear()
        usable = [info for info in self.agents if self.health.usable(info.name)]
        found: list[LinkProfile] = []
        for i, src in enumerate(usable):
            for dst in usable[i + 1:]:
                link = self._measured.get((src.name, dst.name))
                if link is None:
                    probe = ProbeLink(address=dst.address, public_key=dst.public_key,
                                      name=dst.name)
                    link = self.call(src.name, probe, ProbeLinkReply,
                                     timeout_s=self.timeouts.probe_s).link
                    log.info("link %s -> %s: rtt %.3f ms, %.1f MB/s", src.name, dst.name,
                             link.rtt_s * 1e3, link.bandwidth_bytes_per_s / 1e6)
                    self._measured[(src.name, dst.name)] = link
                found.append(link)
        return found

    # --- availability: lost agents, and their return ---

    def usable(self, names: Any = None) -> list[str]:
        """The agents (of `names`, default all) that are up, in cluster order."""
        wanted = None if names is None else set(names)
        return [info.name for info in self.agents
                if (wanted is None or info.name in wanted) and self.health.usable(info.name)]

    def lost(self, name: str, why: str) -> None:
        """`name` failed a request: plan without it until it comes back (see health.py)."""
        record = self.health.lost(name, why)
        log.warning("agent %s is %s", name, record.describe(time.monotonic()))

    def rejoin_due(self) -> list[str]:
        """Knock on lost agents whose backoff ran out, without waiting: a hello is sent
        now and its answer picked up by a later call (between requests), so a hung
        agent costs the app nothing. Returns the agents that are back."""
        now = time.monotonic()
        for name in self.health.due():
            if name in self._knocks:
                continue
            link = self._links[name]
            if not link.socket.poll(0, zmq.POLLOUT):  # no connection (yet)
                self.lost(name, link.watch.poll().explain(name, link.address, None)
                          or "no connection")
                continue
            request = hello_request(self._hub)
            request_id = self._hub.next_id()
            try:
                self._hub.send(link, request.frame(request_id), timeout_s=0.0)
            except (AgentUnavailableError, SecurityError) as error:
                self.lost(name, f"still unavailable: {error}")
                continue
            self._knocks[name] = (request_id, now)
        back: list[str] = []
        for name, (request_id, sent) in list(self._knocks.items()):
            link = self._links[name]
            frame = self._hub.take(request_id, link)
            if frame is None and now - sent < self.timeouts.heartbeat_timeout_s:
                continue  # not answered yet: look again at the next call
            del self._knocks[name]
            if frame is None:
                self._hub.forget([request_id])
                self.lost(name, f"did not answer a hello within "
                                f"{self.timeouts.heartbeat_timeout_s:g} s")
                continue
            try:
                reply = hello_reply(self._hub, link, frame)
            except AgentError as error:
                self.lost(name, f"still unavailable: {error}")
                continue
            self._welcome(name, reply)
            back.append(name)
        return self._introduce(back)

    def rejoin_lost(self) -> list[str]:
        """Knock on every lost agent that is not banned, backoff or not: before an
        explicit act of the app (a deploy), which should see every agent that is up."""
        banned = set(self.health.banned())
        return self.rejoin([n for n in self.health.down() if n not in banned])

    def rejoin(self, names: list[str]) -> list[str]:
        """Say hello to `names` again and re-introduce every usable agent; returns those
        that are back.

        Back means: it answers a hello (which reopens this coordinator's session there,
        also after a restart that forgot it) and every usable agent accepted the new
        peer list. One that fails stays lost, with a longer backoff."""
        back: list[str] = []
        for name in names:
            self._knocks.pop(name, None)
            link = self._links[name]
            if not link.socket.poll(0, zmq.POLLOUT):  # no connection (yet): do not wait
                self.lost(name, link.watch.poll().explain(name, link.address, None)
                          or "no connection")
                continue
            try:
                reply = hello(self._hub, link, timeout_s=self.timeouts.heartbeat_timeout_s)
            except (AgentUnavailableError, AgentError, SecurityError) as error:
                self.lost(name, f"still unavailable: {error}")
                continue
            self._welcome(name, reply)
            back.append(name)
        return self._introduce(back)

    def _welcome(self, name: str, reply: HelloReply) -> None:
        """`name` answered a hello: its (maybe new) profile, and plan on it again."""
        info = agent_info(reply, self._links[name].address, name)
        self.agents = tuple(info if i.name == name else i for i in self.agents)
        self.health.back(name)

    def _introduce(self, back: list[str]) -> list[str]:
        """Give every usable agent the peer list again (`back` may have restarted and
        forgotten it); returns those of `back` still usable after."""
        if not back:
            return back
        members = [self._links[n] for n in self.usable()]
        try:
            introduce(self._hub, members, self.agents,
                      timeout_s=self.timeouts.heartbeat_timeout_s)
        except (AgentUnavailableError, AgentError) as error:
            culprit = getattr(error, "agent", "")
            if culprit in self._links:
                self.lost(culprit, f"lost while re-introducing agents: {error}")
            back = [n for n in back if self.health.usable(n)]
        log.info("agents back: %s", ", ".join(back) or "none")
        return back


__all__ = ["AgentInfo", "Agents", "parse_reply"]
