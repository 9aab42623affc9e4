"""`FallbackPolicy`: which paths may answer a request, in which order, and how long to wait.

The chain is ordered: "cluster" (the deployment, with failover onto the agents still
alive), "local" (this device: the deployed model in-process — the whole ONNX model if
it fits the local budget, else its deepest early exit that does; for an LLM the
deployed checkpoint), and target objects (`KServeV2`, `RemoteAgent`,
`LocalCheckpoint`, `OpenAICompatible`). Privacy: with `allow_cloud=False` no target
that is `cloud` is ever tried, whatever the chain says.

When the cluster is away (no agent left that can hold the model), `when_away` decides:
"fallback" walks the rest of the chain at once; "queue" first waits up to
`Timeouts.queue_s` for agents to come back (knocking with backoff), then walks it.
A per-request `deadline_s` bounds everything: past it the request fails with
`DeadlineError` and is not retried.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from edge_runtime.errors import ConfigError
from edge_runtime.sdk.fallback.local_llm import LocalCheckpoint
from edge_runtime.sdk.fallback.local_model import LocalModel
from edge_runtime.sdk.fallback.targets import LlmFallback, PipelineFallback

CLUSTER = "cluster"
LOCAL = "local"
WHEN_AWAY = ("fallback", "queue")

ChainItem = str | PipelineFallback | LlmFallback


@dataclass(frozen=True)
class FallbackPolicy:
    """The fallback chain and its knobs; one per cluster, overridable per request."""

    chain: tuple[ChainItem, ...] = (CLUSTER,)
    allow_cloud: bool = True
    when_away: str = "fallback"
    deadline_s: float | None = None  # per request, from when it was handed to the SDK
    failover: bool = True  # re-plan over the surviving agents when one is lost

    def __post_init__(self) -> None:
        for item in self.chain:
            if isinstance(item, str):
                if item not in (CLUSTER, LOCAL):
                    raise ConfigError(f"fallback chain entry {item!r}: use 'cluster', 'local' "
                                      "or a target object (KServeV2, RemoteAgent, "
                                      "LocalCheckpoint, OpenAICompatible)")
            elif not isinstance(item, PipelineFallback | LlmFallback):
                raise ConfigError(f"fallback chain entry {item!r} is not a fallback target")
        if len(set(map(id, self.chain))) != len(self.chain) or self.chain.count(CLUSTER) > 1:
            raise ConfigError(f"fallback chain lists an entry twice: {list(self.chain)}")
        if self.when_away not in WHEN_AWAY:
            raise ConfigError(f"when_away must be one of {WHEN_AWAY}, got {self.when_away!r}")
        if self.deadline_s is not None and not self.deadline_s > 0:
            raise ConfigError(f"deadline_s must be positive, got {self.deadline_s!r}")

    @property
    def uses_cluster(self) -> bool:
        return CLUSTER in self.chain

    def override(self, chain: Sequence[ChainItem] | None = None,
                 deadline_s: float | None = None) -> FallbackPolicy:
        """This policy with a request's own chain or deadline."""
        policy = self
        if chain is not None:
            policy = replace(policy, chain=tuple(chain))
        if deadline_s is not None:
            policy = replace(policy, deadline_s=deadline_s)
        return policy


def as_policy(fallback: Sequence[ChainItem] | FallbackPolicy | None,
              base: FallbackPolicy | None = None) -> FallbackPolicy:
    """A policy from what an app passed: a policy, a chain, or None (the base)."""
    if isinstance(fallback, FallbackPolicy):
        return fallback
    base = base or FallbackPolicy()
    if fallback is None:
        return base
    if isinstance(fallback, str):
        raise ConfigError(f"fallback takes a list, e.g. ['cluster', 'local'], not {fallback!r}")
    return base.override(chain=list(fallback))


class Targets:
    """The non-cluster entries of a policy's chain, built once and reused (a local
    model keeps its session; a remote agent keeps its connection)."""

    def __init__(self) -> None:
        self._local_model: LocalModel | None = None
        self._local_llms: dict[Path, LocalCheckpoint] = {}

    def pipeline(self, policy: FallbackPolicy) -> list[PipelineFallback]:
        """The pipeline targets after the cluster, in order, cloud ones dropped if barred."""
        found: list[PipelineFallback] = []
        for item in policy.chain:
            if item == LOCAL:
                if self._local_model is None:
                    self._local_model = LocalModel()
                found.append(self._local_model)
            elif (isinstance(item, PipelineFallback) and not isinstance(item, str)
                  and (policy.allow_cloud or not item.cloud)):
                found.append(item)
        return found

    def llm(self, policy: FallbackPolicy, checkpoint: Path) -> list[LlmFallback]:
        """The LLM targets after the cluster; "local" runs the deployed checkpoint here."""
        found: list[LlmFallback] = []
        for item in policy.chain:
            if item == LOCAL:
                local = self._local_llms.get(checkpoint)
                if local is None:
                    local = LocalCheckpoint(checkpoint, degraded=False)
                    self._local_llms[checkpoint] = local
                found.append(local)
            elif (isinstance(item, LlmFallback) and not isinstance(item, str)
                  and (policy.allow_cloud or not item.cloud)):
                found.append(item)
        return found

    def close(self) -> None:
        if self._local_model is not None:
            self._local_model.close()
        for local in self._local_llms.values():
            local.close()


__all__ = ["CLUSTER", "LOCAL", "ChainItem", "FallbackPolicy", "Targets", "as_policy"]
