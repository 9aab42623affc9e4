"""`Cluster`: the coordinator's view of a set of agents, and `connect`.

A cluster says hello to each agent (name, profile, keys), tells every agent who
the others are (`join`, so they accept each other's activations), measures the
links between them on first deploy, and deploys models (`deploy.py`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from devices.links import LinkProfile
from devices.profile import DeviceProfile
from edge_runtime.agent import protocol as p
from edge_runtime.discovery import AgentAddress
from edge_runtime.errors import AgentError, AgentUnavailableError, ConfigError
from edge_runtime.sdk.config import DEFAULT_TIMEOUTS, Timeouts
from edge_runtime.sdk.errors_map import error_from_frame
from edge_runtime.sdk.hub import AgentLink, Hub
from transports.keys import DEFAULT_KEYS_DIR
from transports.security import Security

log = logging.getLogger(__name__)

C = TypeVar("C", bound="Cluster")


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


class Cluster:
    """Agents that run models together. Use as a context manager or call `close()`."""

    def __init__(self, hub: Hub, links: list[AgentLink], infos: list[AgentInfo],
                 on_close: Callable[[], None] | None = None) -> None:
        self._hub = hub
        self._links = {info.name: link for info, link in zip(infos, links, strict=True)}
        self.agents: tuple[AgentInfo, ...] = tuple(infos)
        self._on_close = on_close
        self._measured_links: list[LinkProfile] | None = None
        self._deployments: list[Any] = []
        self._closed = False

    # --- plumbing the deploy and deployment modules use ---

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

    def call(self, name: str, kind: str, meta: dict[str, Any] | None = None,
             tensors: dict[str, Any] | None = None, timeout_s: float | None = None) -> Any:
        """One request to agent `name`; returns the reply frame or raises its typed error."""
        frame = self._hub.request(self.link(name), kind, meta, tensors, timeout_s)
        if frame.is_error:
            raise error_from_frame(frame, name)
        return frame

    # --- public API ---

    def status(self) -> dict[str, dict[str, Any]]:
        """Each agent's status (deployments, memory, emulation); unreachable ones say so."""
        table: dict[str, dict[str, Any]] = {}
        for info in self.agents:
            try:
                table[info.name] = dict(self.call(info.name, p.STATUS).meta)
                table[info.name]["available"] = True
            except (AgentUnavailableError, AgentError) as error:
                table[info.name] = {"name": info.name, "available": False, "error": str(error)}
            table[info.name]["label"] = info.label
        return table

    def links(self, refresh: bool = False) -> list[LinkProfile]:
        """Measured links between every pair of agents (agent-to-agent probes; cached)."""
        if self._measured_links is not None and not refresh:
            return self._measured_links
        found: list[LinkProfile] = []
        for i, src in enumerate(self.agents):
            for dst in self.agents[i + 1:]:
                reply = self.call(src.name, p.PROBE_LINK,
                                  {"address": dst.address, "public_key": dst.public_key,
                                   "name": dst.name}, timeout_s=self.timeouts.probe_s)
                link = LinkProfile.from_dict(reply.meta)
                log.info("link %s -> %s: rtt %.3f ms, %.1f MB/s", src.name, dst.name,
                         link.rtt_s * 1e3, link.bandwidth_bytes_per_s / 1e6)
                found.append(link)
        self._measured_links = found
        return found

    def plan(self, model: str | os.PathLike[str], strategy: str = "auto", *,
             exits: Any = None, slo_ms: float | None = None, objective: str = "latency",
             batch_size: int = 1, devices: Sequence[str] | None = None,
             calibration: tuple[Mapping[str, Any], Any] | None = None,
             exit_policy: str = "max_prob") -> Any:
        """The `partitioner.Plan` that `deploy` would use, without deploying anything.

        Planning uses the agents' profiles and the links between them (measured
        once per cluster). Inspect or adjust the plan (e.g. calibrated exit
        thresholds), then `deploy(model, plan=plan)`; arguments as for `deploy`.
        """
        from edge_runtime.sdk.deploy import plan_model

        return plan_model(self, Path(model), strategy=strategy, exits=exits, slo_ms=slo_ms,
                          objective=objective, batch_size=batch_size, devices=devices,
                          calibration=calibration, exit_policy=exit_policy)

    def deploy(self, model: str | os.PathLike[str], strategy: str = "auto", *,
               exits: Any = None, slo_ms: float | None = None, objective: str = "latency",
               batch_size: int = 1, plan: Any = None, devices: Sequence[str] | None = None,
               progress: Callable[[str, int, int], None] | None = None,
               calibration: tuple[Mapping[str, Any], Any] | None = None,
               exit_policy: str = "max_prob") -> Any:
        """Plan, extract, send and load `model`; returns a `Deployment` (see deploy.py).

        `slo_ms` with `calibration=(inputs, labels)` plans cuts and exit thresholds
        together (`partitioner.plan_with_slo`): the most accurate plan whose
        expected latency meets the SLO.
        """
        from edge_runtime.sdk.deploy import deploy_model

        deployment = deploy_model(self, Path(model), strategy=strategy, exits=exits,
                                  slo_ms=slo_ms, objective=objective, batch_size=batch_size,
                                  plan=plan, devices=devices, progress=progress,
                                  calibration=calibration, exit_policy=exit_policy)
        self._deployments.append(deployment)
        return deployment

    def deploy_llm(self, path: str | os.PathLike[str], strategy: str = "tensor",
                   **options: Any) -> Any:
        """Split an LLM checkpoint tensor-parallel over the agents; see `sdk/llm.py`."""
        from edge_runtime.sdk.llm import deploy_llm

        deployment = deploy_llm(self, Path(path), strategy, **options)
        self._deployments.append(deployment)
        return deployment

    def close(self) -> None:
        """Unload this cluster's deployments, disconnect, and stop agents it started."""
        if self._closed:
            return
        self._closed = True
        for deployment in self._deployments:
            try:
                deployment.unload()
            except Exception as error:  # closing goes on; an agent may already be gone
                log.debug("unload on close failed: %s", error)
        self._hub.close()
        if self._on_close is not None:
            self._on_close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def hello(hub: Hub, link: AgentLink) -> dict[str, Any]:
    frame = hub.request(link, p.HELLO, timeout_s=hub.timeouts.hello_s)
    if frame.is_error:
        raise error_from_frame(frame, link.name)
    return dict(frame.meta)


def agent_info(meta: dict[str, Any], address: str, name: str) -> AgentInfo:
    profile = replace(DeviceProfile.from_dict(meta["profile"]), name=name)
    return AgentInfo(
        name=name, address=address, public_key=meta.get("public_key"), profile=profile,
        preset=meta.get("preset"), emulated=bool(meta.get("emulated")),
        label=str(meta.get("label") or name), backends=tuple(meta.get("backends", ())),
        memory_budget=meta.get("memory_budget"), pid=int(meta.get("pid", 0)),
    )


def assemble(hub: Hub, links: list[AgentLink], on_close: Callable[[], None] | None = None,
             names: Sequence[str] | None = None, cls: type[C] | None = None) -> C | Cluster:
    """Hello every agent, give them unique names, introduce them to each other."""
    infos: list[AgentInfo] = []
    seen: set[str] = set()
    for index, link in enumerate(links):
        meta = hello(hub, link)
        name = names[index] if names else str(meta.get("name") or link.address)
        if name in seen:
            name = f"{name}-{index}"
        seen.add(name)
        link.name = name
        infos.append(agent_info(meta, link.address, name))
    peers = [{"name": i.name, "public_key": i.public_key} for i in infos]
    for link in links:
        reply = hub.request(link, p.JOIN, {"peers": peers})
        if reply.is_error:
            raise error_from_frame(reply, link.name)
    return (cls or Cluster)(hub, links, infos, on_close)


def _security(keys: str | os.PathLike[str] | None, insecure: bool) -> Security:
    if insecure:
        return Security.insecure_mode()
    return Security.from_dir(Path(keys).expanduser() if keys else DEFAULT_KEYS_DIR.expanduser())


def discovered_key(agent: AgentAddress, security: Security) -> str:
    """The server key to use for an agent found over mDNS: its announced key, if trusted.

    mDNS is unauthenticated (anyone on the network can announce anything), so an
    announced key is used only if it is also in the trusted-keys directory and
    does not contradict a key trusted for that address; otherwise the user is
    told to check the key on the device and trust it. An agent that announced no
    key is looked up by address, as for a static address.
    """
    from transports.errors import SecurityError
    from transports.keys import trusted_keys_in

    announced = agent.properties.get("public_key", "")
    if not announced:
        return security.server_key_for(agent.endpoint).decode()
    trusted = trusted_keys_in(security.trusted_dir) if security.trusted_dir else {}
    by_address = [t for t in trusted.values() if t.address == agent.endpoint]
    if by_address and all(t.public.decode() != announced for t in by_address):
        raise SecurityError(
            f"agent {agent.name or agent.endpoint} at {agent.endpoint} announced public key "
            f"{announced} over mDNS, but a different key is trusted for that address "
            f"({by_address[0].name}); the device was re-keyed or someone else announces it: "
            "check `edge-runtime keys show` on the device before trusting the new key")
    if not any(t.public.decode() == announced for t in trusted.values()):
        raise SecurityError(
            f"agent {agent.name or agent.endpoint} at {agent.endpoint} announced public key "
            f"{announced} over mDNS, which is not trusted here (mDNS is not authenticated); "
            "check it on the device with `edge-runtime keys show`, then run `edge-runtime keys "
            f"trust {announced} --name <device> --address {agent.endpoint}`")
    return announced


def connect(addresses: Sequence[str | AgentAddress], keys: str | os.PathLike[str] | None = None,
            *, insecure: bool = False, timeouts: Timeouts = DEFAULT_TIMEOUTS,
            server_keys: Sequence[str | None] | None = None) -> Cluster:
    """A cluster of running agents at `addresses` (e.g. ``tcp://10.0.0.2:7700``).

    `keys`: this machine's keys directory (default ``~/.config/edge-runtime/keys``);
    each agent's public key is looked up there by address (`edge-runtime keys trust
    KEY --name N --address ADDR`) unless `server_keys` gives them in order.
    Agents found by `edge_runtime.discovery.browse()` may be passed as they are:
    their announced key is used only if it is trusted (`discovered_key`).
    """
    if not addresses:
        raise ConfigError("connect() needs at least one agent address, e.g. tcp://10.0.0.2:7700")
    security = _security(keys, insecure)
    hub = Hub(security, timeouts)
    try:
        links: list[AgentLink] = []
        for index, entry in enumerate(addresses):
            address = entry.endpoint if isinstance(entry, AgentAddress) else entry
            key: str | None = None
            if not insecure:
                given = server_keys[index] if server_keys else None
                if given:
                    key = given
                elif isinstance(entry, AgentAddress):
                    key = discovered_key(entry, security)
                else:
                    key = security.server_key_for(address).decode()
            links.append(hub.connect(address, key))
        return assemble(hub, links)
    except BaseException:
        hub.close()
        raise
