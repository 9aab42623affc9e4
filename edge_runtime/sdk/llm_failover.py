"""`LlmFailover`: where an LLM deployment is placed now, and how it moves.

The LLM counterpart of `failover.py`. When a step fails because an agent was lost
(or one forgot the deployment in a restart), the checkpoint is placed again over the
allowed agents still up and the runner replays the sequence so far (`llm_runner.py`);
when that is impossible the cluster is away (`ClusterUnavailableError`), and the
deployment walks its fallback chain — or, under the "queue" policy, first waits for
agents to come back (`wait_for_agents`). Agents usable again are placed on between
generations (`take_back`); shares left on agents while they were lost are unloaded
when they return.

Placing again keeps the deployment's strategy: a tensor-parallel deployment is placed
tensor-parallel again (`place_llm`); any other goes through the first deploy's entry
point (`llm_pipeline.place_strategy`) with the strategy it was made with — a pipeline
stays a pipeline over the survivors, "auto" is the cost model's choice over them — so
the runner (a `PipelineRunner`) steps stages again and its replay rebuilds each stage's
KV cache. When the asked strategy has no layout over the agents still up (too few, or
too little memory), `REPLAN_ORDER` says what is tried next.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from edge_runtime.errors import (
    AgentUnavailableError,
    CheckpointError,
    ClusterUnavailableError,
    ConfigError,
    DeployError,
    DeploymentGoneError,
    PartitionError,
)
from edge_runtime.sdk.agents import Agents
from edge_runtime.sdk.llm_pipeline import LLM_STRATEGIES, place_strategy
from edge_runtime.sdk.llm_pipeline_place import PipelinePlacement
from edge_runtime.sdk.llm_place import LlmPlacement, LlmSource, place_llm, unload_llm
from edge_runtime.sdk.llm_runner import AgentRunner
from edge_runtime.sdk.tickets import Ticket
from partitioner.errors import InfeasiblePlanError
from partitioner.llm_layout import LlmLayout

log = logging.getLogger(__name__)

# How often a generation queued for the cluster's return looks again.
QUEUE_POLL_S = 0.2

#: The strategies tried, in order, to place a deployment made with the key's strategy
#: again over the agents still up: the asked one first; a hybrid that no longer has a
#: layout (it needs three agents) keeps its stages as a pipeline; the last resort is
#: the best layout that fits ("auto": a pipeline of one survivor is that agent alone).
#: A "tensor" deployment is placed tensor-parallel again (`place_llm`), as it was made.
REPLAN_ORDER: dict[str, tuple[str, ...]] = {
    "auto": ("auto",),
    "single": ("single", "auto"),
    "pipeline": ("pipeline", "auto"),
    "hybrid": ("hybrid", "pipeline", "auto"),
}


class LlmFailover:
    """The placement of one LLM deployment, moved as agents come and go."""

    def __init__(self, cluster: Agents, source: LlmSource, runner: AgentRunner,
                 enabled: bool = True, *, strategy: str | None = None,
                 objective: str | None = None, layout: LlmLayout | None = None) -> None:
        """`strategy`, `objective`: what `deploy_llm` was asked (None: the placement's
        own — a pipelined placement's layout strategy and objective, else "tensor");
        `layout`: the first placement's (default: a pipelined placement's own)."""
        placement = runner.placement
        if layout is None and isinstance(placement, PipelinePlacement):
            layout = placement.layout
        strategy = strategy or (layout.strategy if layout is not None else "tensor")
        if strategy not in LLM_STRATEGIES:
            raise ConfigError(f"LLM strategy {strategy!r} is not one of "
                              f"{list(LLM_STRATEGIES)}")
        self.cluster = cluster
        self.source = source
        self.runner = runner
        self.enabled = enabled
        self.strategy = strategy
        self.objective = objective or (layout.objective if layout is not None else None)
        self.layout: LlmLayout | None = layout  # the current placement's (None: tensor)
        self.failovers = 0
        self._placed_among = frozenset(cluster.usable(self.allowed))  # usable when placed
        self._orphans: list[tuple[str, str]] = []  # (agent, deployment id) on lost agents

    @property
    def allowed(self) -> tuple[str, ...]:
        return self.source.devices or tuple(a.name for a in self.cluster.agents)

    @property
    def name(self) -> str:
        return self.source.checkpoint.name

    def recover(self, error: AgentUnavailableError | DeploymentGoneError) -> LlmPlacement:
        """The runner's `recover`: place the checkpoint again over the agents still up."""
        if not self.enabled:
            raise error
        old = self.runner.placement
        lost = self.runner.lost_agents()
        if not lost and isinstance(error, AgentUnavailableError) and error.agent in old.names:
            lost = [error.agent]  # an agent said a peer is unreachable
        if isinstance(error, AgentUnavailableError) and not lost:
            raise error  # a step timed out while every agent answers heartbeats: busy
        if isinstance(error, DeploymentGoneError) and error.agent in old.names:
            self.cluster.rejoin([error.agent])  # it restarted: hello, introduce again
        for name in lost:
            self.cluster.lost(name, str(error))
        self._retire(old)
        why = str(error)
        placement = self._place(why)
        self.failovers += 1
        log.warning("LLM %s re-placed over %s after: %s", self.name, list(placement.names),
                    why[:300])
        return placement

    def take_back(self) -> None:
        """Between generations: place again over agents usable now that were not when it
        was placed (back after a loss, or restarted); the old placement serves on if the
        new one cannot be made."""
        if self.cluster.health.due():
            self.cluster.rejoin_due()
        self._sweep_orphans()
        usable = self.cluster.usable(self.allowed)
        back = [name for name in usable if name not in self._placed_among]
        if not back:
            return
        self._placed_among = frozenset(usable)
        old = self.runner.placement
        try:
            placement = self.place_over(usable)
        except (AgentUnavailableError, PartitionError, DeployError, ConfigError) as error:
            log.warning("re-placing %s onto agents that came back failed: %s", self.name, error)
            return
        self._retire(old)
        self.runner.install(placement)
        log.info("LLM %s re-placed over %s (agents back: %s)", self.name,
                 list(placement.names), back)

    def wait_for_agents(self, ticket: Ticket, queue_s: float) -> bool:
        """The "queue" policy: knock until agents that can hold the checkpoint are back
        (then the runner uses them; True), for at most `queue_s` or the ticket's deadline."""
        end = time.monotonic() + queue_s
        while time.monotonic() < end:
            self.cluster.rejoin_due()
            usable = self.cluster.usable(self.allowed)
            if usable and any(n not in self._placed_among for n in usable):
                try:
                    placement = self._place("agents came back")
                except ClusterUnavailableError as error:
                    log.info("LLM %s: agents back but not enough: %s", self.name, error)
                else:
                    self.runner.install(placement)
                    log.info("LLM %s: cluster back, placed over %s", self.name,
                             list(placement.names))
                    return True
            time.sleep(ticket.left_s(min(QUEUE_POLL_S, max(0.0, end - time.monotonic()))))
        return False

    def _place(self, why: str) -> LlmPlacement:
        """A placement over the allowed agents still up; ClusterUnavailableError if none."""
        allowed = self.allowed
        for _ in range(len(allowed) + 1):
            survivors = self.cluster.usable(allowed)
            self._placed_among = frozenset(survivors)
            if not survivors:
                raise ClusterUnavailableError(f"no agent left for {self.name} after: "
                                              f"{why[:300]}")
            try:
                return self.place_over(survivors)
            except AgentUnavailableError as again:
                self.cluster.lost(again.agent, f"lost while re-planning: {again}")
            except (PartitionError, DeployError, CheckpointError, ConfigError) as cannot:
                # ConfigError: e.g. a 4-bit share the survivors' budgets can neither
                # load nor stream
                raise ClusterUnavailableError(
                    f"the agents still up ({', '.join(survivors)}) cannot hold "
                    f"{self.name}: {cannot}") from cannot
        raise ClusterUnavailableError(f"agents kept failing while re-planning after {why[:300]}")

    def place_over(self, names: Sequence[str]) -> LlmPlacement:
        """The checkpoint placed over `names` with the deployment's strategy (or the
        next of `REPLAN_ORDER` that has a layout over them); `self.layout` its layout."""
        if self.strategy == "tensor":
            placement = place_llm(self.cluster, self.source, names)
            self.layout = None
            return placement
        *first, last = REPLAN_ORDER[self.strategy]
        for strategy in first:
            try:
                placement, layout = place_strategy(self.cluster, self.source, names, strategy,
                                                   objective=self.objective)
                break
            except InfeasiblePlanError as error:
                log.info("LLM %s: no %s layout over %s (%s)", self.name, strategy,
                         list(names), error)
        else:
            placement, layout = place_strategy(self.cluster, self.source, names, last,
                                               objective=self.objective)
        self.layout = layout
        return placement

    def _retire(self, old: LlmPlacement) -> None:
        """Unload `old` from the agents still up (a step stuck on the lost member is
        cancelled there); its shares on lost agents are unloaded when they return."""
        up = self.cluster.usable(old.names)
        self._orphans += [(n, old.deployment_id) for n in old.names if n not in up]
        unload_llm(self.cluster, old.deployment_id, up,
                   timeout_s=self.cluster.timeouts.heartbeat_timeout_s)

    def _sweep_orphans(self) -> None:
        back = [o for o in self._orphans if self.cluster.health.usable(o[0])]
        self._orphans = [o for o in self._orphans if o not in back]
        for name, deployment_id in back:
            unload_llm(self.cluster, deployment_id, [name],
                       timeout_s=self.cluster.timeouts.heartbeat_timeout_s)


__all__ = ["REPLAN_ORDER", "LlmFailover"]
