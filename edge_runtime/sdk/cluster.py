"""`Cluster`: the coordinator's view of a set of agents, and `connect`.

A cluster says hello to each agent (name, profile, keys; this opens the
coordinator's session and lease there), tells every agent who the others are
(`join`, so they accept each other's activations), measures the links between
them on first deploy (`agents.py`), and deploys models (`deploy.py`, `llm.py`).
It is the top of the SDK: it imports those modules, none of them imports it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from edge_runtime.discovery import AgentAddress, parse_endpoint
from edge_runtime.errors import ConfigError
from edge_runtime.sdk.agent_link import AgentLink
from edge_runtime.sdk.agents import AgentInfo, Agents
from edge_runtime.sdk.config import DEFAULT_TIMEOUTS, Timeouts
from edge_runtime.sdk.deploy import STRATEGIES, DeploySource, place, plan_model
from edge_runtime.sdk.deployment import Deployment
from edge_runtime.sdk.fallback.policy import ChainItem, FallbackPolicy, Targets, as_policy
from edge_runtime.sdk.hub import Hub
from edge_runtime.sdk.journal import Journal
from edge_runtime.sdk.llm import LlmDeployment
from edge_runtime.sdk.llm_deploy import deploy_llm
from edge_runtime.sdk.membership import agent_info, hello, introduce
from edge_runtime.sdk.progress import AnyProgress
from edge_runtime.sdk.resume import Resumed, open_journal, resume_journal
from transports.errors import SecurityError
from transports.keys import DEFAULT_KEYS_DIR, trust_command, trusted_keys_in
from transports.security import Security

log = logging.getLogger(__name__)

C = TypeVar("C", bound="Cluster")


class Cluster(Agents):
    """Agents that run models together. Use as a context manager or call `close()`."""

    def __init__(self, hub: Hub, links: list[AgentLink], infos: list[AgentInfo],
                 on_close: Callable[[], None] | None = None, *,
                 policy: FallbackPolicy | None = None, journal: Journal | None = None) -> None:
        super().__init__(hub, links, infos)
        self._on_close = on_close
        self._deployments: list[Deployment | LlmDeployment] = []
        self._closed = False
        self.policy = policy or FallbackPolicy()
        self.journal = journal
        self._targets = Targets()

    # --- public API ---

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
        return plan_model(self, Path(model), strategy=strategy, exits=exits, slo_ms=slo_ms,
                          objective=objective, batch_size=batch_size, devices=devices,
                          calibration=calibration, exit_policy=exit_policy)

    def deploy(self, model: str | os.PathLike[str], strategy: str = "auto", *,
               exits: Any = None, slo_ms: float | None = None, objective: str = "latency",
               batch_size: int = 1, plan: Any = None, devices: Sequence[str] | None = None,
               progress: AnyProgress | None = None,
               calibration: tuple[Mapping[str, Any], Any] | None = None,
               exit_policy: str = "max_prob") -> Deployment:
        """Plan, extract, send and load `model`; returns a `Deployment` (see deploy.py).

        `slo_ms` with `calibration=(inputs, labels)` plans cuts and exit thresholds
        together (`partitioner.plan_with_slo`): the most accurate plan whose
        expected latency meets the SLO.
        """
        if strategy not in STRATEGIES:
            raise ConfigError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        source = DeploySource(Path(model), strategy, exits, objective, batch_size,
                              tuple(devices) if devices else None, slo_ms, calibration,
                              exit_policy)
        self.rejoin_lost()  # a deploy should see every agent that is up
        placement = place(self, source, source.devices, plan=plan, progress=progress)
        deployment = Deployment(self, placement, source, policy=self.policy,
                                targets=self._targets, journal=self.journal)
        self._deployments.append(deployment)
        return deployment

    def deploy_llm(self, path: str | os.PathLike[str], strategy: str = "tensor",
                   **options: Any) -> LlmDeployment:
        """Split an LLM checkpoint tensor-parallel over the agents; see `sdk/llm_deploy.py`."""
        self.rejoin_lost()
        deployment = deploy_llm(self, Path(path), strategy, policy=self.policy,
                                targets=self._targets, journal=self.journal, **options)
        self._deployments.append(deployment)
        return deployment

    def resume(self, timeout_s: float | None = None) -> Resumed:
        """Complete the requests a previous run of the app left unfinished in the journal.

        Each unfinished entry is matched to a deployment of this cluster by its model
        (the ONNX file's sha256, the checkpoint's digest): deploy the same models first.
        An entry answered before the crash is handed back from the journal; a pending one
        is run again from its journaled inputs (prompt, for an LLM). Every key is
        delivered once: after this, its entry is done. Entries of models not deployed
        here stay in the journal and are listed in `skipped`."""
        if self.journal is None:
            raise ConfigError("resume() needs a journal: connect(..., journal=PATH) or "
                              "local_cluster(..., journal=PATH)")
        return resume_journal(self.journal, self._deployments, timeout_s)

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
        self._targets.close()
        if self.journal is not None:
            self.journal.close()
        self._hub.close()
        if self._on_close is not None:
            self._on_close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def assemble(hub: Hub, links: list[AgentLink], on_close: Callable[[], None] | None = None,
             names: Sequence[str] | None = None, cls: type[C] | None = None, *,
             policy: FallbackPolicy | None = None, journal: Journal | None = None
             ) -> C | Cluster:
    """Hello every agent, give them unique names, introduce them to each other."""
    infos: list[AgentInfo] = []
    seen: set[str] = set()
    for index, link in enumerate(links):
        reply = hello(hub, link)
        name = names[index] if names else reply.name
        if name in seen:
            name = f"{name}-{index}"
        seen.add(name)
        link.name = name
        hub.leases.add(name, link.address, link.public_key)  # renamed: logs say which
        infos.append(agent_info(reply, link.address, name))
    introduce(hub, links, infos)
    return (cls or Cluster)(hub, links, infos, on_close, policy=policy, journal=journal)


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
            "check it on the device with `edge-runtime keys show`, then run "
            + trust_command(announced, agent.name or "DEVICE", agent.endpoint))
    return announced


def connect(addresses: Sequence[str | AgentAddress], keys: str | os.PathLike[str] | None = None,
            *, insecure: bool = False, timeouts: Timeouts = DEFAULT_TIMEOUTS,
            server_keys: Sequence[str | None] | None = None,
            journal: str | os.PathLike[str] | Journal | None = None,
            fallback: Sequence[ChainItem] | FallbackPolicy | None = None) -> Cluster:
    """A cluster of running agents at `addresses` (e.g. ``tcp://10.0.0.2:7700``).

    `keys`: this machine's keys directory (default ``~/.config/edge-runtime/keys``);
    each agent's public key is looked up there by address (`edge-runtime keys trust
    --name N --address ADDR -- KEY`) unless `server_keys` gives them in order.
    Agents found by `edge_runtime.discovery.browse()` may be passed as they are:
    their announced key is used only if it is trusted (`discovered_key`).
    `journal`: a SQLite file where every request is journaled until it is answered
    (`resume()` completes what a crashed app left); `fallback`: the chain walked when
    the cluster cannot answer, e.g. ``["cluster", "local", KServeV2(url, model="m")]``,
    or a `FallbackPolicy` (see docs/RESILIENCE.md).
    """
    policy = as_policy(fallback)
    if not addresses:
        raise ConfigError("connect() needs at least one agent address, e.g. tcp://10.0.0.2:7700")
    security = _security(keys, insecure)
    hub = Hub(security, timeouts)
    try:
        links: list[AgentLink] = []
        for index, entry in enumerate(addresses):
            address = parse_endpoint(entry.endpoint if isinstance(entry, AgentAddress) else entry)
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
        return assemble(hub, links, policy=policy, journal=open_journal(journal))
    except BaseException:
        hub.close()
        raise
