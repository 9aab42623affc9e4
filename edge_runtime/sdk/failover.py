"""`Failover`: where a pipeline deployment is placed now, and how it moves.

When an agent is lost the placement is retired from the agents still up (freeing
their memory) and the model is placed again over the allowed agents still up
(`deploy.place`: plans, sends only the shards their caches lack, loads). When no
placement is possible — no agent up, or the survivors cannot hold the model — the
cluster is *away*, with the reason in words; `Deployment` then walks the fallback
chain. Agents that answer a hello again are placed on again between requests
(`take_back`), or, while away, as soon as they are back (`come_back`).
"""

from __future__ import annotations

import logging
import time

from edge_runtime.errors import AgentUnavailableError, DeployError, PartitionError
from edge_runtime.sdk.agents import Agents
from edge_runtime.sdk.deploy import DeploySource, Placement, place, unload_stages

log = logging.getLogger(__name__)


class Failover:
    """The current placement of one pipeline deployment, moved as agents come and go."""

    def __init__(self, cluster: Agents, source: DeploySource, placement: Placement,
                 name: str) -> None:
        self.cluster = cluster
        self.source = source
        self.placement: Placement | None = placement
        self.name = name  # the model's name, for logs
        self.away = ""  # why no placement is possible (while `placement` is None)
        self.away_since: float | None = None
        self.failovers = 0  # times it was placed again after losing an agent
        self._placed_among = frozenset(cluster.usable(self.allowed))  # usable when placed
        self._orphans: list[tuple[str, str]] = []  # (agent, stage id) left on lost agents

    @property
    def allowed(self) -> tuple[str, ...]:
        return self.source.devices or tuple(a.name for a in self.cluster.agents)

    def lose(self, lost: str | None, why: str) -> bool:
        """Place again without `lost` (None: an agent forgot the deployment); True if placed."""
        if lost:
            self.cluster.lost(lost, why)
        self.retire()
        placement = self._place_on_survivors(why)
        if placement is None:
            return False
        self.failovers += 1
        self._use(placement)
        log.warning("%s re-planned over %s after: %s", self.name, self.devices(), why[:300])
        return True

    def answers(self, name: str) -> bool:
        """Whether `name`, blamed by another agent, answers this coordinator's hello (then
        it is not lost: a new placement connects the agents afresh)."""
        return name in self.allowed and name in self.cluster.rejoin([name])

    def come_back(self) -> bool:
        """While away: knock on agents whose backoff ran out; True once placed again (also
        when agents were brought back by another deployment or a restart)."""
        self.cluster.rejoin_due()
        self.sweep_orphans()
        if not self._newcomers():
            return False
        placement = self._place_on_survivors(self.away)
        if placement is None:
            return False
        self._use(placement)
        log.info("%s: cluster back, placed over %s", self.name, self.devices())
        return True

    def take_back(self) -> bool:
        """Between requests: place again when agents are usable that were not when it was
        placed (back after a loss, or restarted); True if it moved. The new placement is
        made before the old one is retired, so a failed attempt leaves the deployment
        serving where it was."""
        if self.cluster.health.due():
            self.cluster.rejoin_due()
        self.sweep_orphans()
        back = self._newcomers()
        if not back:
            return False
        if self.placement is None:
            placement = self._place_on_survivors(self.away)
        else:
            try:
                placement = place(self.cluster, self.source, self.cluster.usable(self.allowed))
            except (AgentUnavailableError, PartitionError, DeployError) as error:
                log.warning("%s: re-planning onto %s failed, staying where it is: %s",
                            self.name, back, error)
                self._placed_among = frozenset(self.cluster.usable(self.allowed))
                return False
            self.retire()
        if placement is None:
            return False
        self._use(placement)
        log.info("%s re-planned over %s (agents back: %s)", self.name, self.devices(), back)
        return True

    def _newcomers(self) -> list[str]:
        """Allowed agents usable now that were not when the current placement was made."""
        return [n for n in self.cluster.usable(self.allowed) if n not in self._placed_among]

    def retire(self) -> None:
        """Unload the current placement from the agents still up. Stages on lost agents
        are unloaded when those agents come back (`sweep_orphans`): the lease keeper keeps
        renewing this coordinator's session there, so the lease would not reclaim them."""
        old, self.placement = self.placement, None
        if old is None:
            return
        stages = [(stage.device, spec.deployment_id)
                  for spec, stage in zip(old.specs, old.plan.stages, strict=True)]
        up = [s for s in stages if self.cluster.health.usable(s[0])]
        self._orphans += [s for s in stages if s not in up]
        unload_stages(self.cluster, up, timeout_s=self.cluster.timeouts.heartbeat_timeout_s)

    def sweep_orphans(self) -> None:
        """Unload stages left on agents that were lost and are usable again."""
        back = [s for s in self._orphans if self.cluster.health.usable(s[0])]
        if not back:
            return
        self._orphans = [s for s in self._orphans if s not in back]
        unload_stages(self.cluster, back, timeout_s=self.cluster.timeouts.heartbeat_timeout_s)
        log.info("%s: unloaded %d stage(s) left on agents that came back", self.name, len(back))

    def devices(self) -> list[str]:
        return [] if self.placement is None else [s.device for s in self.placement.plan.stages]

    def _use(self, placement: Placement) -> None:
        self.placement = placement
        self.away, self.away_since = "", None
        self._placed_among = frozenset(self.cluster.usable(self.allowed))

    def _place_on_survivors(self, why: str) -> Placement | None:
        """A placement over the allowed agents still up, or None (then `away` says why)."""
        allowed = self.allowed
        for _ in range(len(allowed) + 1):
            survivors = self.cluster.usable(allowed)
            if not survivors:
                self._set_away("no agent is up: " + "; ".join(
                    f"{n}: {d}" for n, d in self.cluster.health.summary().items()))
                return None
            try:
                return place(self.cluster, self.source, survivors)
            except AgentUnavailableError as error:
                if error.agent not in allowed:
                    raise
                self.cluster.lost(error.agent, f"lost while re-planning: {error}")
            except (PartitionError, DeployError) as error:
                self._set_away(f"the agents still up ({', '.join(survivors)}) cannot hold "
                               f"the model: {error}")
                return None
        self._set_away(f"agents kept failing while re-planning after: {why[:200]}")
        return None

    def _set_away(self, why: str) -> None:
        self.placement = None
        self._placed_among = frozenset(self.cluster.usable(self.allowed))
        self.away = why
        if self.away_since is None:
            self.away_since = time.monotonic()
        log.warning("%s: cluster away: %s", self.name, why)


__all__ = ["Failover"]
