"""`Deployment`: a model loaded on the cluster; `run` and the pipelined `run_many`, which
survive the loss of agents.

`run` sends the inputs to the first stage's agent and waits for the `result` frame
that the last stage (or the stage whose exit fired) sends straight back; stages before
it whose exits did not fire sent their outputs straight back too (partial results of the
same attempt, which the answer names), and the one `Result` merges them. `run_many`
keeps up to `max_in_flight` requests in the pipeline at once and yields results in
input order. What one attempt puts on the wire, and what its answer becomes, is
`run_wire.py`.

When an agent is lost mid-request (dead, hung past its heartbeat timeout, unreachable
from the coordinator or from the stage before it) the deployment fails over: it
re-plans over the agents still up (`place`, which sends only the shards their caches
lack), and sends every request in flight again from its inputs, in order. Each
attempt has its own wire id and the hub drops answers to abandoned ones, so every
request is answered exactly once. When no agent is left that can hold the model the
cluster is *away*: the fallback chain (`fallback/policy.py`) decides — wait for agents
to come back, answer on this device or in the cloud, or fail with the reasons.
Lost agents that answer again are re-planned onto between requests, never in the
middle of one.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from edge_runtime.errors import (
    AgentError,
    AgentUnavailableError,
    ClusterUnavailableError,
    ConfigError,
    DeadlineError,
    DeployError,
    DeploymentGoneError,
    FallbackError,
    PartitionError,
)
from edge_runtime.protocol import RunResult, TensorSpec
from edge_runtime.sdk.agent_link import AgentLink
from edge_runtime.sdk.agents import Agents
from edge_runtime.sdk.config import DEFAULT_MAX_IN_FLIGHT
from edge_runtime.sdk.deploy import DeploySource, Placement, unload_stages
from edge_runtime.sdk.errors_map import error_from_frame
from edge_runtime.sdk.failover import Failover
from edge_runtime.sdk.fallback.policy import ChainItem, FallbackPolicy, Targets, as_policy
from edge_runtime.sdk.fallback.targets import ModelInfo
from edge_runtime.sdk.fallback.walk import answer_elsewhere
from edge_runtime.sdk.inputs import check_inputs
from edge_runtime.sdk.journal import Journal, JournalEntry
from edge_runtime.sdk.result import Result
from edge_runtime.sdk.retune import retune_exits
from edge_runtime.sdk.run_wire import is_lost, read_result, result_record, send_attempt
from edge_runtime.sdk.tickets import Ledger, Ticket
from edge_runtime.sdk.tracing import TraceCapture, traced
from transports.wire import Frame

log = logging.getLogger(__name__)


class Deployment:
    """A model deployed on a cluster (one pipeline of stages), with failover."""

    def __init__(self, cluster: Agents, placement: Placement, source: DeploySource, *,
                 policy: FallbackPolicy | None = None, targets: Targets | None = None,
                 journal: Journal | None = None) -> None:
        self.cluster = cluster
        self.source = source
        self.policy = policy or FallbackPolicy()
        self._targets = targets or Targets()
        plan = placement.plan
        self.model_sha256 = str(plan.model_sha256)
        self.signature = tuple(TensorSpec(s.name, s.dtype, tuple(s.shape))
                               for s in plan.model_inputs)
        self.model = ModelInfo(source.model, self.model_sha256,
                               str(plan.model_name or source.model.stem), self.signature,
                               tuple(s.name for s in plan.model_outputs))
        self.bytes_sent = placement.bytes_sent  # shard bytes the first deploy transferred
        self._ledger = Ledger(journal, self.model_sha256, "pipeline")
        self._failover = Failover(cluster, source, placement, self.model.name)
        self._unloaded = False
        self.tracer: TraceCapture | None = None  # requests sent while set are traced
        self._install()

    # --- the current placement ---

    @property
    def _placement(self) -> Placement | None:
        return self._failover.placement

    @property
    def placement_bytes_sent(self) -> int:
        """Shard bytes the current placement transferred (0: every agent had its shard
        cached, as when it moves back onto agents that held it before)."""
        return 0 if self._placement is None else self._placement.bytes_sent

    @property
    def failovers(self) -> int:
        """Times this deployment was placed again after losing an agent."""
        return self._failover.failovers

    def _install(self) -> None:
        """Point requests at the current placement (after a deploy, a failover or a
        take-back)."""
        placement = self._placement
        assert placement is not None
        self.id = placement.deployment_id
        self.plan = placement.plan
        self.specs = placement.specs
        self.agents = tuple(dict.fromkeys(stage.device for stage in self.plan.stages))
        self._links: list[AgentLink] = [self.cluster.link(name) for name in self.agents]
        self._first = self.cluster.link(self.plan.stages[0].device)
        self._predicted_stages = tuple(s.predicted_compute_s + s.predicted_transfer_s
                                       for s in self.plan.stages)

    @property
    def strategy(self) -> str:
        return str(self.plan.strategy)

    @property
    def available(self) -> bool:
        """True while the cluster holds this deployment (False: away, see `why_away`)."""
        return self._placement is not None

    @property
    def why_away(self) -> str:
        return self._failover.away

    def describe(self) -> str:
        stages = " → ".join(f"{s.device}[{s.node_start}:{s.node_end}]" for s in self.plan.stages)
        where = stages if self.available else f"away ({self.why_away})"
        return (f"{self.plan.model_name} ({self.plan.strategy}): {where}; predicted "
                f"{self.plan.predicted_latency_s * 1e3:.2f} ms")

    # --- requests ---

    def run(self, inputs: Mapping[str, Any], timeout_s: float | None = None, *,
            key: str | None = None, deadline_s: float | None = None,
            fallback: Sequence[ChainItem] | FallbackPolicy | None = None,
            trace: bool = False) -> Result:
        """One inference, answered by the cluster (failing over if an agent is lost) or by
        the fallback chain. Raises `InputError` before sending anything if inputs do not
        match; `ClusterUnavailableError` listing every path tried when none answered;
        `DeadlineError` past `deadline_s`. `key`: the request's journal key (default: a
        new one); `fallback`: this request's chain or policy instead of the cluster's;
        `trace`: record spans on every agent, returned aligned as `Result.trace`."""
        if not trace:
            return next(self.run_many([inputs], max_in_flight=1, timeout_s=timeout_s,
                                      keys=None if key is None else [key],
                                      deadline_s=deadline_s, fallback=fallback))
        with self.tracing() as capture:
            result = self.run(inputs, timeout_s, key=key, deadline_s=deadline_s,
                              fallback=fallback)
        return dataclasses.replace(result, trace=capture.trace)

    def tracing(self) -> AbstractContextManager[TraceCapture]:
        """`with model.tracing() as t: model.run_many(...)`: every request inside is traced
        on every agent; `t.trace` (an aligned `Trace`) is set when the block ends."""
        return traced(self.cluster, self, self.agents, title=f"run {self.model.name}")

    def run_many(self, inputs: Iterable[Mapping[str, Any]], *,
                 max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
                 timeout_s: float | None = None, keys: Iterable[str] | None = None,
                 deadline_s: float | None = None,
                 fallback: Sequence[ChainItem] | FallbackPolicy | None = None,
                 ) -> Iterator[Result]:
        """Stream `inputs` through the pipeline, at most `max_in_flight` at once.

        Yields results in input order, each exactly once, through failovers. `timeout_s`
        bounds the wait for each result while its agents are alive (a busy agent is not
        a lost one). On an error that no failover or fallback fixes, the rest are
        abandoned (journaled ones stay for `Cluster.resume()`) and the error raised."""
        if max_in_flight < 1:
            raise ConfigError(f"max_in_flight must be at least 1, got {max_in_flight}")
        if self._unloaded:
            raise ConfigError(f"deployment {self.id} was unloaded; deploy the model again")
        policy = as_policy(fallback, self.policy)
        if deadline_s is not None:
            policy = policy.override(deadline_s=deadline_s)
        timeout = self.cluster.timeouts.request_s if timeout_s is None else timeout_s
        key_iter = iter(keys) if keys is not None else None

        def tickets() -> Iterator[Ticket]:
            for item in inputs:
                arrays = check_inputs(self.signature, item)
                key = next(key_iter, None) if key_iter is not None else None
                yield self._ledger.open(arrays, key, policy.deadline_s)

        return self._stream(tickets(), policy, max_in_flight, timeout)

    journal_kind = "pipeline"

    @property
    def model_key(self) -> str:
        return self.model_sha256

    def resume_entries(self, entries: Sequence[JournalEntry], timeout_s: float | None = None
                       ) -> Iterator[tuple[str, Result]]:
        """Complete journaled requests (`Cluster.resume`): the `run_many` path, in order."""
        timeout = self.cluster.timeouts.request_s if timeout_s is None else timeout_s
        tickets = (self._ledger.reopen(e.key, e.inputs, self.policy.deadline_s)
                   for e in entries)  # inputs read one request at a time, as sent
        for result in self._stream(tickets, self.policy, DEFAULT_MAX_IN_FLIGHT, timeout):
            yield result.key, result

    def _stream(self, source: Iterator[Ticket], policy: FallbackPolicy, max_in_flight: int,
                timeout: float) -> Iterator[Result]:
        if policy.uses_cluster and self._failover.take_back():
            self._install()
        pending: deque[Ticket] = deque()
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < max_in_flight:
                    ticket = next(source, None)
                    if ticket is None:
                        exhausted = True
                        break
                    pending.append(ticket)
                    if self._placement is not None and policy.uses_cluster:
                        self._send_or_recover(ticket, pending, policy)
                if not pending:
                    return
                head = pending[0]
                try:
                    result = self._answer(head, pending, policy, timeout)
                except (AgentError, DeployError, PartitionError, FallbackError,
                        DeadlineError) as error:
                    if not isinstance(error, AgentUnavailableError):
                        self._ledger.fail(head, error)  # a final answer: bad input, ...
                    raise
                pending.popleft()
                self._ledger.deliver(head, result)
                yield result
        finally:
            self.cluster.hub.forget(t.request_id for t in pending if t.request_id is not None)

    def _send(self, ticket: Ticket) -> None:
        """Send `ticket`'s next attempt to the current placement's first stage."""
        assert self._placement is not None
        self._ledger.attempt(ticket)
        send_attempt(self.cluster, self._first, self.specs[0].deployment_id, ticket,
                     self.tracer)

    def _send_or_recover(self, ticket: Ticket, pending: deque[Ticket],
                         policy: FallbackPolicy) -> None:
        try:
            self._send(ticket)
        except AgentUnavailableError as error:
            ticket.request_id = None
            if not policy.failover or not is_lost(self.cluster, error):
                raise
            self._recover(error.agent, str(error), pending, policy)

    def _answer(self, head: Ticket, pending: deque[Ticket], policy: FallbackPolicy,
                timeout: float) -> Result:
        """`head`'s result: from the cluster (failing over as needed) or the fallbacks."""
        hub = self.cluster.hub
        while True:
            if self._placement is None or not policy.uses_cluster:
                if policy.uses_cluster and self._cluster_back(head, pending, policy):
                    continue
                return self._fallback(head, policy)
            if head.request_id is None:
                self._send_or_recover(head, pending, policy)
                continue
            try:
                frame = hub.wait({head.request_id}, head.left_s(timeout), self._links, "result")
                record = None if frame.is_error else result_record(frame, self.agents[0])
                partials = [] if record is None or not record.elsewhere else hub.wait_partials(
                    head.request_id, record.elsewhere, head.left_s(timeout), self._links)
            except AgentUnavailableError as error:
                if head.deadline is not None and time.monotonic() >= head.deadline:
                    head.left_s(0.0)  # raises DeadlineError: the wait ended at the deadline
                if not policy.failover or not is_lost(self.cluster, error):
                    raise
                self._recover(error.agent, str(error), pending, policy)
                continue
            if record is None:
                failure = error_from_frame(frame, frame.sender or self.agents[0])
                if policy.failover and isinstance(failure, AgentUnavailableError):
                    # a stage could not reach its next hop: lost, unless it answers us (a
                    # stale connection after a restart; a new placement connects afresh)
                    answers = head.attempts <= 2 and self._failover.answers(failure.agent)
                    self._recover(None if answers else failure.agent, str(failure), pending,
                                  policy)
                    continue
                if policy.failover and isinstance(failure, DeploymentGoneError):
                    if failure.agent in self.agents:  # it restarted: hello, introduce again
                        self.cluster.rejoin([failure.agent])
                    self._recover(None, str(failure), pending, policy)
                    continue
                raise failure
            return self._result(frame, record, head, partials)

    # --- failover ---

    def _recover(self, lost: str | None, why: str, pending: deque[Ticket],
                 policy: FallbackPolicy) -> None:
        """Place again without `lost` and send everything in flight again, in order."""
        self.cluster.hub.forget(t.request_id for t in pending if t.request_id is not None)
        for ticket in pending:
            ticket.request_id = None
            ticket.notes.append(f"failover: {why[:200]}")
        if self._failover.lose(lost, why):
            self._resend(pending, policy)

    def _resend(self, pending: deque[Ticket], policy: FallbackPolicy) -> None:
        """On a new placement: every request in flight again, in input order."""
        self._install()
        for ticket in pending:
            ticket.request_id = None
        for ticket in pending:
            if self._placement is None:
                return
            self._send_or_recover(ticket, pending, policy)

    def _cluster_back(self, head: Ticket, pending: deque[Ticket],
                      policy: FallbackPolicy) -> bool:
        """Whether agents came back and the model was placed on them again. Knocks once
        (respecting each agent's backoff); with `when_away="queue"`, keeps knocking until
        `Timeouts.queue_s` after the cluster went away (or `head`'s deadline)."""
        while True:
            if self._failover.come_back():
                self._resend(pending, policy)
                return self._placement is not None
            since = self._failover.away_since
            if policy.when_away != "queue" or since is None:
                return False
            left = since + self.cluster.timeouts.queue_s - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(0.2, head.left_s(left)))

    # --- fallback ---

    def _fallback(self, head: Ticket, policy: FallbackPolicy) -> Result:
        return answer_elsewhere(self._targets.pipeline(policy), self.model, head,
                                self.cluster.timeouts.request_s, self.why_away,
                                self._ledger.journal is not None)

    def _result(self, frame: Frame, record: RunResult, ticket: Ticket,
                partials: list[Frame]) -> Result:
        return read_result(frame, record, ticket, default_agent=self.agents[0],
                           predicted_latency_s=float(self.plan.predicted_latency_s),
                           predicted_stages=self._predicted_stages, tracer=self.tracer,
                           partials=partials)

    # --- management ---

    def set_exit_thresholds(self, thresholds: Mapping[str, Any]) -> None:
        """Change early-exit thresholds while deployed: no new plan, shard or session.

        `thresholds`: exit name -> threshold under that exit's policy, None (never
        stop there), or `(policy, threshold)`. Only the agents holding those exits'
        stages are told (one `set_exit` message each); requests already running
        finish under the old rule. `plan` and `specs` are updated to match, and a
        failover keeps them.
        """
        if self._unloaded:
            raise ConfigError(f"deployment {self.id} was unloaded; deploy the model again")
        if self._placement is None:
            raise ClusterUnavailableError(f"the cluster is away ({self.why_away}); set exit "
                                          "thresholds when it is back")
        plan, specs = retune_exits(self.cluster, self.id, self.plan, self.specs, thresholds)
        self.plan, self.specs = plan, specs
        self._failover.placement = dataclasses.replace(self._placement, plan=plan,
                                                       specs=specs)
        kept = {e.name: None if e.threshold is None else (e.policy, e.threshold)
                for e in plan.exits}
        self.source = self._failover.source = dataclasses.replace(self.source, exits=kept)

    def status(self) -> dict[str, Any]:
        """Each stage's status as its agent reports it."""
        table: dict[str, Any] = {}
        for spec, stage in zip(self.specs, self.plan.stages, strict=True):
            table[spec.deployment_id] = self.cluster.deployment_status(stage.device,
                                                                       spec.deployment_id)
        return table

    def unload(self) -> None:
        """Unload every stage from its agent (best effort for agents that are gone)."""
        if self._unloaded:
            return
        self._unloaded = True
        if self._placement is None:
            return
        problems = unload_stages(self.cluster, [
            (stage.device, spec.deployment_id)
            for spec, stage in zip(self.specs, self.plan.stages, strict=True)])
        self._failover.placement = None
        if problems:
            log.warning("unload of %s incomplete: %s", self.id, "; ".join(problems))
