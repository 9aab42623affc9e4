"""`LlmDeployment`: an LLM split over agents, that survives losing one.

Checking `deploy_llm`'s arguments and choosing a strategy is `llm_deploy.py`; placing
the checkpoint is `llm_place.py`; moving one forward step to the agents, and replaying
the sequence after a failover, is `llm_runner.py`. This module is the deployment the
app holds: `generate` (streamed or not), `logits`, `status`, with the
same guarantees as a pipeline deployment —

- an agent lost mid-generation: the checkpoint is placed again over the agents still
  up and the generation resumes from the prompt plus the tokens already produced, so
  the caller's stream has no duplicate and no gap;
- the cluster away (no agent left that can hold the checkpoint): the fallback chain
  continues the generation — "local" runs the same checkpoint on this device, a
  `LocalCheckpoint` a smaller one, an `OpenAICompatible` endpoint the cloud — from the
  prompt text plus the text produced so far; the tokens say who produced them;
- with a journal, the request is written before its first step and marked delivered
  when its last token (or the whole `Generation`) is handed over.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from edge_runtime.errors import (
    ClusterUnavailableError,
    ConfigError,
    DeadlineError,
    FallbackError,
)
from edge_runtime.llm.engine import Generation, LlmEngine, TokenEvent
from edge_runtime.sdk.agents import Agents
from edge_runtime.sdk.fallback.policy import ChainItem, FallbackPolicy, Targets, as_policy
from edge_runtime.sdk.fallback.targets import GenerationRequest
from edge_runtime.sdk.journal import Journal, JournalEntry
from edge_runtime.sdk.journal_codec import (
    decode_generation_request,
    encode_generation_request,
)
from edge_runtime.sdk.llm_failover import LlmFailover
from edge_runtime.sdk.llm_pipeline import PipelineRunner, describe_stages
from edge_runtime.sdk.llm_pipeline_place import PipelinePlacement
from edge_runtime.sdk.llm_place import LlmPlacement, LlmSource, unload_llm
from edge_runtime.sdk.llm_runner import AgentRunner
from edge_runtime.sdk.tickets import Ledger, Ticket
from edge_runtime.sdk.tracing import TraceCapture, traced

if TYPE_CHECKING:
    from edge_runtime.llm import LlmConfig, LlmTokenizer
    from partitioner.llm_layout import LlmLayout
    from partitioner.tensor import TensorPlan

log = logging.getLogger(__name__)

class LlmDeployment:
    """An LLM deployed tensor-parallel on a cluster: `generate`, `logits`, `status`."""

    journal_kind = "llm"

    def __init__(self, cluster: Agents, source: LlmSource, placement: LlmPlacement,
                 tokenizer: LlmTokenizer | None, *, timeout_s: float | None = None,
                 policy: FallbackPolicy | None = None, targets: Targets | None = None,
                 journal: Journal | None = None, strategy: str | None = None,
                 objective: str | None = None, layout: LlmLayout | None = None) -> None:
        self.cluster = cluster
        self.source = source
        self.checkpoint = source.checkpoint
        self.quantize = source.quantize  # weight format: None (fp32) or "q4"
        self.policy = policy or FallbackPolicy()
        self._targets = targets or Targets()
        self._ledger = Ledger(journal, source.digest, "llm")
        self.bytes_sent = placement.bytes_sent  # checkpoint bytes the first deploy sent
        # steps a pipelined placement stage to stage, any other as tensor-parallel
        self.runner: AgentRunner = PipelineRunner(cluster, placement, source.max_context,
                                                  timeout_s)
        # placed again after a loss with the strategy asked ("auto": chosen anew)
        self._failover = LlmFailover(cluster, source, self.runner, self.policy.failover,
                                     strategy=strategy, objective=objective, layout=layout)
        self.runner.recover = self._failover.recover
        self.engine = LlmEngine(self.runner, source.config, tokenizer)
        self._unloaded = False

    # --- the current placement ---

    @property
    def id(self) -> str:
        return self.runner.placement.deployment_id

    @property
    def plan(self) -> TensorPlan:
        return self.runner.placement.plan

    @property
    def agents(self) -> tuple[str, ...]:
        return self.runner.placement.names

    @property
    def layout(self) -> LlmLayout | None:
        """The current placement's strategy choice: every prediction and the reason (None
        for a tensor plan placed as given)."""
        return self._failover.layout

    @property
    def failovers(self) -> int:
        """Times this deployment was placed again after losing an agent."""
        return self._failover.failovers

    @property
    def model_key(self) -> str:
        return self.source.digest

    @property
    def config(self) -> LlmConfig:
        return self.engine.config

    @property
    def max_context(self) -> int:
        return self.runner.max_context

    @property
    def max_batch(self) -> int:
        """Sequences one step may carry (a KV cache slot each on every agent)."""
        return self.source.max_batch

    @property
    def hub_agent(self) -> str:
        placement = self.runner.placement
        if isinstance(placement, PipelinePlacement):  # the last stage's hub answers
            return placement.answering_agent
        return self.agents[self.plan.hub]

    def describe(self) -> str:
        weights = "4-bit" if self.quantize == "q4" else "fp32"
        if isinstance(self.runner.placement, PipelinePlacement):
            return (f"{self.checkpoint.name} {weights} weights, "
                    f"{describe_stages(self.runner.placement)}")
        moe = self.plan.shape.experts > 0  # experts are named, not mlp columns
        shares = "; ".join(replace(s, device=name).summary(moe)
                           for name, s in zip(self.agents, self.plan.shares, strict=True))
        notes = "".join(f"; {note}" for note in self.plan.notes)  # e.g. int8 streaming
        return (f"{self.checkpoint.name} tensor-parallel over {len(self.agents)} agent(s), "
                f"{weights} weights, hub {self.hub_agent}: {shares}{notes}")

    # --- requests ---

    def generate(self, prompt: str | Sequence[int], max_new_tokens: int = 32, *,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                 seed: int | None = None, stop: Sequence[int | str] | None = None,
                 stream: bool = False, key: str | None = None,
                 deadline_s: float | None = None,
                 fallback: Sequence[ChainItem] | FallbackPolicy | None = None,
                 ) -> Generation | Iterator[TokenEvent]:
        """Generate up to `max_new_tokens` after `prompt` (text or token ids).

        `stream=False`: the finished `Generation` (text, ids, time to first token,
        s/token, who served it). `stream=True`: an iterator of `TokenEvent`s, each
        yielded as soon as it is sampled. `stop`: token ids and/or strings (default: the
        checkpoint's EOS ids). An agent lost mid-generation is replaced transparently
        (failover and replay); with the cluster away the fallback chain continues.
        Raises `GenerationError` (prompt too long for `max_context`, bad ids) before
        anything is sent, `ClusterUnavailableError` when no path could answer.
        """
        if self._unloaded:
            raise ConfigError(f"LLM deployment {self.id} was unloaded; deploy it again")
        policy = as_policy(fallback, self.policy)
        if deadline_s is not None:
            policy = policy.override(deadline_s=deadline_s)
        ids = self.engine.encode(prompt)
        self.engine.check_length(len(ids), max_new_tokens)  # before any journal entry
        text = prompt if isinstance(prompt, str) else (
            self.engine.tokenizer.decode(ids) if self.engine.tokenizer is not None else None)
        request = GenerationRequest(tuple(ids), text, max_new_tokens, temperature, top_k,
                                    top_p, seed, None if stop is None else tuple(stop))
        ticket = self._ledger.open({}, key, policy.deadline_s,
                                   encode_generation_request(request))
        if policy.uses_cluster:
            self._failover.take_back()
        events = self._delivered(ticket, request, policy)
        if stream:
            return events
        return self._collect(list(events), request)

    def _delivered(self, ticket: Ticket, request: GenerationRequest,
                   policy: FallbackPolicy) -> Iterator[TokenEvent]:
        """The events, each handed on as soon as it is sampled; the journal entry is
        marked delivered when the stream ends (the caller read it to its end)."""
        handed: list[TokenEvent] = []
        try:
            for event in self._events(ticket, request, policy):
                handed.append(event)
                yield event
        except DeadlineError as error:
            self._ledger.fail(ticket, error)  # final: not resumed
            raise
        self._ledger.deliver_generation(ticket, self._collect(handed, request))

    def _events(self, ticket: Ticket, request: GenerationRequest,
                policy: FallbackPolicy) -> Iterator[TokenEvent]:
        """Tokens from the cluster, then (if it goes away) from the fallback chain."""
        produced: list[TokenEvent] = []
        reasons: list[str] = []
        started = time.perf_counter()
        self.runner.deadline = ticket.deadline
        try:
            while policy.uses_cluster:
                try:
                    for event in self._on_cluster(ticket, request, produced):
                        produced.append(replace(event, index=len(produced),
                                                seconds=time.perf_counter() - started))
                        yield produced[-1]
                    return
                except ClusterUnavailableError as error:
                    reasons.append(f"cluster: {error}")
                    ticket.notes.append(f"cluster away after {len(produced)} token(s)")
                if policy.when_away != "queue" or not self._failover.wait_for_agents(
                        ticket, self.cluster.timeouts.queue_s):
                    break
        finally:
            self.runner.deadline = None
            self.runner.release(0)  # ended: a failover need not replay it
        if not policy.uses_cluster:
            reasons.append("cluster: not in the chain")
        yield from self._elsewhere(ticket, request, produced, reasons, policy, started)

    def continue_elsewhere(self, request: GenerationRequest, produced: Sequence[TokenEvent],
                           why: str, started: float, ticket: Ticket | None = None
                           ) -> Iterator[TokenEvent]:
        """The rest of `request` after `produced` from the fallback chain (the cluster
        went away: `why`); `started` is the perf_counter the events' seconds count from.
        For a batch scheduler's generations, which run outside `generate` (`ticket`:
        their journal entry, from `open_entry`)."""
        if ticket is None:
            ticket = self._ledger.reopen("", {}, self.policy.deadline_s)
        return self._elsewhere(ticket, request, list(produced), [f"cluster: {why}"],
                               self.policy, started)

    # --- journal entries of generations a batch scheduler runs outside `generate` ---

    def open_entry(self, request: GenerationRequest, key: str | None = None) -> Ticket:
        """Journal `request` before its first step (a no-op ticket without a journal):
        if this process dies mid-batch, `Cluster.resume()` finishes it."""
        ticket = self._ledger.open({}, key, self.policy.deadline_s,
                                   encode_generation_request(request))
        self._ledger.attempt(ticket)
        return ticket

    def close_entry(self, ticket: Ticket, request: GenerationRequest,
                    events: list[TokenEvent], error: BaseException | None = None) -> None:
        """The entry's end: delivered with `events` (just before the last is handed
        over), or, on a final `error` (bad input, the caller cancelled), failed with
        its reason so no later process runs it again. A generation stopped by anything
        else is not closed: it stays unfinished for `Cluster.resume()`."""
        if error is None:
            self._ledger.deliver_generation(ticket, self._collect(events, request))
        else:
            self._ledger.fail(ticket, error)

    def _elsewhere(self, ticket: Ticket, request: GenerationRequest,
                   produced: list[TokenEvent], reasons: list[str], policy: FallbackPolicy,
                   started: float) -> Iterator[TokenEvent]:
        """Walk the fallback targets for what is left of `request`."""
        left = request.max_new_tokens - len(produced)
        so_far = "".join(e.text for e in produced)
        # no text (ids and no tokenizer): a target with the same vocabulary continues
        # from the ids; one that needs text says so
        text = None if request.prompt_text is None else request.prompt_text + so_far
        rest = GenerationRequest((*request.prompt_ids, *(e.token_id for e in produced)),
                                 text, left, request.temperature, request.top_k,
                                 request.top_p, request.seed, request.stop)
        for target in self._targets.llm(policy, self.checkpoint):
            given = 0
            try:
                for event in target.stream(rest, ticket.left_s(self.cluster.timeouts.request_s)):
                    given += 1
                    yield TokenEvent(len(produced) + given - 1, event.token_id, event.text,
                                     time.perf_counter() - started, target.name,
                                     target.degraded)
                return
            except FallbackError as error:
                if given:
                    raise  # tokens were handed over: another target cannot take over cleanly
                reasons.append(str(error))
        journaled = (f"; it stays in the journal as {ticket.key} for Cluster.resume()"
                     if self._ledger.journal is not None and ticket.key else "")
        raise ClusterUnavailableError("no path could answer the generation: "
                                      + "; ".join(reasons) + journaled)

    def _on_cluster(self, ticket: Ticket, request: GenerationRequest,
                    produced: list[TokenEvent]) -> Iterator[TokenEvent]:
        """The rest of the generation on the cluster: from the prompt plus what was
        produced before the cluster went away (greedy output is the same either way)."""
        left = request.max_new_tokens - len(produced)
        if left <= 0:
            return iter(())
        self._ledger.attempt(ticket)
        return self.engine.stream([*request.prompt_ids, *(e.token_id for e in produced)],
                                  left, temperature=request.temperature, top_k=request.top_k,
                                  top_p=request.top_p, seed=request.seed, stop=request.stop)

    def _collect(self, events: list[TokenEvent], request: GenerationRequest) -> Generation:
        ids = tuple(e.token_id for e in events)
        text = "".join(e.text for e in events)
        ttft = events[0].seconds if events else 0.0
        per_token = (events[-1].seconds - ttft) / (len(events) - 1) if len(events) > 1 else 0.0
        stops = set(self.config.eos_token_ids) if request.stop is None else {
            s for s in request.stop if isinstance(s, int)}
        texts = [] if request.stop is None else [s for s in request.stop if isinstance(s, str)]
        stopped = bool(events) and ((events[-1].token_id in stops and events[-1].token_id >= 0)
                                    or any(t in text for t in texts))
        finish = "stop" if stopped or len(events) < request.max_new_tokens else "length"
        servers = list(dict.fromkeys(e.served_by for e in events)) or ["cluster"]
        return Generation(request.prompt_ids, ids, text, finish, ttft, per_token,
                          served_by=servers[-1], degraded=any(e.degraded for e in events),
                          notes=tuple(f"served by {s}" for s in servers[:-1]))

    def resume_entries(self, entries: Sequence[JournalEntry], timeout_s: float | None = None
                       ) -> Iterator[tuple[str, Generation]]:
        """Run journaled generations again (`Cluster.resume`), each to completion."""
        for entry in entries:
            request = decode_generation_request(entry.request)
            ticket = self._ledger.reopen(entry.key, {}, self.policy.deadline_s)
            events = list(self._delivered(ticket, request, self.policy))  # journal kept
            yield entry.key, self._collect(events, request)

    def tracing(self) -> AbstractContextManager[TraceCapture]:
        """`with llm.tracing() as t: llm.generate(...)`: every step inside is traced on
        every agent; `t.trace` (an aligned `Trace`) is set when the block ends."""
        return traced(self.cluster, self.runner, self.agents, title=f"generate {self.id}")

    def logits(self, ids: Sequence[int]) -> Any:
        """Logits [len(ids), vocab] of a fresh sequence at positions 0.. (for verification)."""
        return self.engine.logits(ids)

    def status(self) -> dict[str, Any]:
        """Each agent's view of its share: rss/peak RSS, window counters, steps, compute, comm."""
        table: dict[str, Any] = {}
        for name in self.agents:
            table[name] = self.cluster.deployment_status(name, self.id)
        return table

    def unload(self) -> None:
        """Unload every share (best effort for agents that are gone)."""
        if self._unloaded:
            return
        self._unloaded = True
        self.runner.closed = True
        unload_llm(self.cluster, self.id, self.agents)


__all__ = ["AgentRunner", "LlmDeployment"]
