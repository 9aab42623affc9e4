"""`AgentRunner`: the engine's `Runner` over the agents of an LLM deployment, with replay.

Why a Runner: the generation logic (prefill, decode loop, sampling, stop tokens,
streaming) is `edge_runtime.llm.LlmEngine`'s and is the same for in-process workers
and agents; this module only moves one forward step at a time to the agents. So
`generate(stream=True)` yields each token as soon as the hub's answer arrives.

One step: the same small frame (`llm_step`: per sequence its KV slot, start and
length, then int64 token ids), encoded once, to every agent over the coordinator's
persistent sockets. Several sequences in one step (a batch) share every matrix product
and allreduce on the agents. The engine's generation steps are sampled where the
logits are (`forward_sampled`): the step carries each sequence's sampling settings and
generator state, the group's hub samples with the engine's own `sample` and answers
the token and the advanced state — not a vocabulary of logits per token, which the
members no longer gather in full either when the sampler is greedy or top-k
(`agent/llm_sampler.py`). `logits()` (verification) and replays ask for logits.
A pipelined placement's last stage answers logits; its tokens are sampled on the
coordinator with the same draw (`llm_pipeline.PipelineRunner`).

Replay: the runner remembers, per KV slot, the token ids whose keys and values the
agents hold. When an agent is lost mid-generation, the deployment is placed again over
the agents still up (`recover`, from `llm.py`) and every slot's sequence so far is
re-run as one prefill step: the new agents rebuild the KV caches and return the same
logits, so each token stream goes on with no duplicate and no gap (greedy output
equals an uninterrupted run).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Collection, Generator, Iterator, Sequence

import numpy as np

from edge_runtime.errors import (
    AgentError,
    AgentUnavailableError,
    ClusterUnavailableError,
    ConfigError,
    DeadlineError,
    DeploymentGoneError,
    GenerationError,
)
from edge_runtime.llm.engine import BatchItem
from edge_runtime.llm.sampling import Draw, rng_state, sample, set_rng_state
from edge_runtime.protocol import LlmCancel, LlmStep, LlmStepReply, StepSampling
from edge_runtime.sdk.agent_link import AgentLink
from edge_runtime.sdk.agents import Agents, parse_reply
from edge_runtime.sdk.errors_map import error_from_frame
from edge_runtime.sdk.llm_place import LlmPlacement
from edge_runtime.sdk.tracing import TraceCapture
from transports.errors import ProtocolError
from transports.wire import Frame

# A failure during a replay is recovered again, at most this many times per step.
MAX_RECOVERIES_PER_STEP = 4
# How long a cancelled decode run's answers are read before the rest are forgotten.
CANCEL_DRAIN_S = 2.0

Recover = Callable[[AgentUnavailableError | DeploymentGoneError], LlmPlacement]


class AgentRunner:
    """`Runner` over the agents of one deployment: one `llm_step` frame per forward."""

    def __init__(self, cluster: Agents, placement: LlmPlacement, max_context: int,
                 timeout_s: float | None = None, recover: Recover | None = None) -> None:
        self._cluster = cluster
        self._max_context = max_context
        self._timeout_s = timeout_s
        self.recover = recover  # set by the deployment: places it again after a loss
        self.deadline: float | None = None  # time.monotonic() the current request ends by
        self.replays = 0  # steps re-run as a prefill after a failover
        self.last_step: dict[str, float] = {}
        self.tracer: TraceCapture | None = None  # steps sent while set are traced (tracing.py)
        # generations decode on the agents (`decode_run`); False: one step per token
        self.decode_on_agents = True
        self.closed = False
        self.install(placement)

    def install(self, placement: LlmPlacement) -> None:
        """Use a (new) placement; its agents hold no KV cache yet."""
        self.placement = placement
        self._names = placement.names
        self._links: list[AgentLink] = [self._cluster.link(n) for n in placement.names]
        self._history: dict[int, list[int]] = {}  # per KV slot: ids held, from position 0

    @property
    def max_context(self) -> int:
        return self._max_context

    def lost_agents(self) -> list[str]:
        """The agents of this placement the hub has declared lost."""
        return [link.name for link in self._links
                if link.dead or (link.alive is not None and not link.alive())]

    def release(self, slot: int) -> None:
        """The sequence in `slot` ended: a replay need not rebuild it."""
        self._history.pop(slot, None)

    def forward(self, token_ids: Sequence[int], start: int, *,
                last_only: bool = True) -> np.ndarray:
        return self.forward_batch([BatchItem(0, tuple(int(t) for t in token_ids), start)],
                                  last_only=last_only)

    def forward_batch(self, items: Sequence[BatchItem], *,
                      last_only: bool = True) -> np.ndarray:
        """One step for several sequences (one KV slot each): logits of each one's last
        token (or of every token), in item order. After a failover every sequence the
        agents held is replayed onto the new placement in one step."""
        logits = self._forward(items, last_only, None)
        assert isinstance(logits, np.ndarray)
        return logits

    def forward_sampled(self, items: Sequence[BatchItem], draws: Sequence[Draw]) -> list[int]:
        """One step for several sequences: each one's next token, drawn with its `Draw`
        (the generator advanced in place) where the logits are — the group's hub; here,
        from logits, for a replay after a failover (or a pipelined placement:
        `PipelineRunner._sampled_step`)."""
        if len(draws) != len(items):
            raise GenerationError(f"{len(draws)} draws for {len(items)} sequences")
        tokens = self._forward(items, True, draws)
        assert isinstance(tokens, list)
        return tokens

    def runs_on_agents(self) -> bool:
        """Whether `decode_run` runs on the agents (else step by step from here)."""
        return self.decode_on_agents

    def decode_run(self, item: BatchItem, draw: Draw, max_tokens: int,
                   stop_ids: Collection[int]) -> Iterator[int]:
        """Up to `max_tokens` tokens of one sequence, from feeding `item` on, decoded on
        the agents (`agent/llm_decode.py`): one `llm_step` starts the run and each token
        is yielded as its answer arrives; the run stops at a token in `stop_ids`. Closing
        the iterator early cancels the run on the agents. Without `runs_on_agents()`, and
        for the step after a loss (placed again and replayed, as `forward_sampled` does),
        it goes step by step."""
        left = max_tokens
        failed: AgentUnavailableError | DeploymentGoneError | None = None
        while left > 0:
            if failed is not None or not self.runs_on_agents():
                tokens = self._forward([item], True, [draw], failed)
                assert isinstance(tokens, list)
                run: Iterator[int] = iter(tokens)
                failed = None
            else:
                run = self._run(item, draw, left, stop_ids)
            try:
                for token in run:
                    left -= 1
                    yield token
                    if token in stop_ids:
                        return
                    item = BatchItem(item.slot, (token,), item.start + len(item.token_ids))
            except (AgentUnavailableError, DeploymentGoneError) as error:
                if self.recover is None or isinstance(error, ClusterUnavailableError):
                    raise
                failed = error  # the next token: placed again, then the run goes on
            finally:
                if isinstance(run, Generator):
                    run.close()

    def _run(self, item: BatchItem, draw: Draw, tokens: int,
             stop_ids: Collection[int]) -> Generator[int, None, None]:
        """One decode run on the agents: its tokens as they are answered; the KV history
        follows the tokens the agents have fed."""
        if self.closed:
            raise ConfigError(f"LLM deployment {self.placement.deployment_id} was unloaded; "
                              "deploy it again")
        hub, timeouts = self._cluster.hub, self._cluster.timeouts
        base = [*self._history.get(item.slot, [])[:item.start], *item.token_ids]
        first = hub.reserve_ids(tokens)
        sampling = (StepSampling(draw.params.temperature, draw.params.top_k, draw.params.top_p,
                                 b"" if draw.params.greedy else rng_state(draw.rng)),)
        step = LlmStep(self.placement.deployment_id, (item.slot,), (item.start,),
                       (len(item.token_ids),), True,
                       0 if self.tracer is None else self.tracer.trace_id, sampling,
                       tokens - 1, tuple(sorted(stop_ids)))
        ids = np.asarray(item.token_ids, dtype=np.int64)
        index, final = 0, False
        began, started = time.time(), time.perf_counter()  # each token's: since the last
        try:
            hub.send_all(self._links, step.frame(first, tensors={"ids": ids}),
                         timeout_s=timeouts.hello_s)
            while not final:
                frame = hub.wait({first + index, first}, self._wait_s(), self._links, "token")
                if frame.is_error:
                    hub.forget([first])  # the other members' copies of the same error
                    raise error_from_frame(frame, frame.sender or self._names[self.placement.hub])
                reply = parse_reply(LlmStepReply, frame.meta, frame.sender, step.KIND)
                if len(reply.tokens) != 1:
                    raise AgentError(f"answered {len(reply.tokens)} tokens for one sequence",
                                     agent=frame.sender)
                if not draw.params.greedy:
                    set_rng_state(draw.rng, reply.rngs[0])
                self._history[item.slot] = base
                base = [*base, reply.tokens[0]]  # fed by the next step of the run
                final = reply.final
                self.last_step = {"wall_s": time.perf_counter() - started,
                                  "compute_s": reply.compute_s, "comm_s": reply.comm_s}
                if self.tracer is not None:
                    self.tracer.record("request", f"decode step {index}", began,
                                       request_id=first + index)
                began, started = time.time(), time.perf_counter()
                index += 1
                yield reply.tokens[0]
        finally:
            if not final:
                self._cancel(first, index, tokens)

    def _cancel(self, first: int, answered: int, tokens: int) -> None:
        """End a run that is not finished (the caller stopped, or it failed): tell the hub,
        read its answers to the final one, briefly, and forget what may still come."""
        hub = self._cluster.hub
        link = self._links[self.placement.hub]
        pending = set(range(first + answered, first + tokens))
        with contextlib.suppress(AgentUnavailableError, ProtocolError):
            hub.send(link, LlmCancel(self.placement.deployment_id, first).frame(hub.next_id()))
            deadline = time.monotonic() + CANCEL_DRAIN_S
            while pending and time.monotonic() < deadline:
                frame = hub.wait(pending, deadline - time.monotonic(), [link], "cancelled run")
                pending.discard(frame.request_id)
                if frame.is_error or LlmStepReply.from_meta(frame.meta).final:
                    break
        hub.forget(pending)

    def _wait_s(self) -> float:
        """How long to wait for one answer: the request timeout, within the deadline."""
        timeout = (self._cluster.timeouts.request_s if self._timeout_s is None
                   else self._timeout_s)
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise DeadlineError("the generation passed its deadline")
            timeout = min(timeout, left)
        return timeout

    def _forward(self, items: Sequence[BatchItem], last_only: bool,
                 draws: Sequence[Draw] | None,
                 failed: AgentUnavailableError | DeploymentGoneError | None = None
                 ) -> np.ndarray | list[int]:
        """A step's logits, or with `draws` its tokens; failover and replay on the way
        (at once when the caller's own step `failed`)."""
        if self.closed:
            raise ConfigError(f"LLM deployment {self.placement.deployment_id} was unloaded; "
                              "deploy it again")
        after = {slot: list(ids) for slot, ids in self._history.items()}
        for item in items:
            after[item.slot] = after.get(item.slot, [])[:item.start] + list(item.token_ids)
        send, send_last, replayed = list(items), last_only, False
        for _ in range(MAX_RECOVERIES_PER_STEP + 1):
            try:
                if failed is not None:
                    lost, failed = failed, None
                    raise lost
                if draws is not None and not replayed:
                    tokens = self._sampled_step(send, draws)
                    self._history = after
                    return tokens
                logits = self._step(send, send_last)
            except (AgentUnavailableError, DeploymentGoneError) as error:
                if self.recover is None or isinstance(error, ClusterUnavailableError):
                    raise
                self.install(self.recover(error))  # ClusterUnavailableError when away
                self.replays += 1
                # rebuild every slot's KV cache on the new agents, this step included
                send = [BatchItem(slot, tuple(ids), 0) for slot, ids in after.items()]
                send_last, replayed = False, True
                continue
            if replayed:
                logits = self._rows_of(items, send, logits, last_only)
            self._history = after
            if draws is not None:  # a replay answered logits: the same draw, here
                return [sample(row, d.params, d.rng) for row, d in zip(logits, draws,
                                                                       strict=True)]
            return logits
        raise ClusterUnavailableError("agents kept failing while replaying a step of "
                                      f"{sum(len(i) for i in after.values())} tokens")

    @staticmethod
    def _rows_of(items: Sequence[BatchItem], replayed: Sequence[BatchItem],
                 logits: np.ndarray, last_only: bool) -> np.ndarray:
        """`items`' rows out of a replay step that returned every token's logits."""
        ends: dict[int, int] = {}
        row = 0
        for item in replayed:
            row += len(item.token_ids)
            ends[item.slot] = row
        rows: list[np.ndarray] = []
        for item in items:
            end = ends[item.slot]
            rows.append(logits[end - 1:end] if last_only
                        else logits[end - len(item.token_ids):end])
        return np.concatenate(rows, axis=0)

    def _step(self, items: Sequence[BatchItem], last_only: bool) -> np.ndarray:
        """One step answered with logits."""
        frame, _ = self._exchange(items, last_only, ())
        return self._logits_of(frame)

    def _sampled_step(self, items: Sequence[BatchItem], draws: Sequence[Draw]) -> list[int]:
        """One step answered with each sequence's token, sampled by the hub with the
        state of its generator sent along; the generators take the hub's new state."""
        sampling = tuple(StepSampling(d.params.temperature, d.params.top_k, d.params.top_p,
                                      b"" if d.params.greedy else rng_state(d.rng))
                         for d in draws)
        frame, reply = self._exchange(items, True, sampling)
        if not reply.tokens:  # an agent that does not sample answers logits: sample here
            logits = self._logits_of(frame)
            return [sample(row, d.params, d.rng) for row, d in zip(logits, draws, strict=True)]
        if len(reply.tokens) != len(items):
            raise AgentError(f"answered {len(reply.tokens)} tokens for {len(items)} sequences",
                             agent=frame.sender)
        for draw, state in zip(draws, reply.rngs, strict=True):
            if not draw.params.greedy:
                set_rng_state(draw.rng, state)
        return list(reply.tokens)

    def _exchange(self, items: Sequence[BatchItem], last_only: bool,
                  sampling: tuple[StepSampling, ...]) -> tuple[Frame, LlmStepReply]:
        """Send one step to every agent (encoded once); the hub's answer, checked."""
        hub = self._cluster.hub
        timeouts = self._cluster.timeouts
        deployment_id = self.placement.deployment_id
        request_id = hub.next_id()
        ids = np.ascontiguousarray(np.concatenate(
            [np.asarray(item.token_ids, dtype=np.int64) for item in items]))
        step = LlmStep(deployment_id, tuple(i.slot for i in items),
                       tuple(i.start for i in items), tuple(len(i.token_ids) for i in items),
                       bool(last_only), 0 if self.tracer is None else self.tracer.trace_id,
                       sampling)
        started, began = time.perf_counter(), time.time()
        timeout = self._wait_s()
        try:
            hub.send_all(self._links, step.frame(request_id, tensors={"ids": ids}),
                         timeout_s=timeouts.hello_s)
            frame = hub.wait({request_id}, timeout, self._links, "logits")
        except AgentUnavailableError:
            hub.forget([request_id])
            if self.deadline is not None and time.monotonic() >= self.deadline:
                raise DeadlineError("the generation passed its deadline") from None
            raise
        if frame.is_error:
            hub.forget([request_id])  # the other members' copies of the same error
            raise error_from_frame(frame, frame.sender or self._names[self.placement.hub])
        reply = parse_reply(LlmStepReply, frame.meta, frame.sender, step.KIND)
        self.last_step = {"wall_s": time.perf_counter() - started,
                          "compute_s": reply.compute_s, "comm_s": reply.comm_s}
        if self.tracer is not None:
            name = f"step ({len(ids)} token{'s' * (len(ids) != 1)})"
            self.tracer.record("request", name, began, request_id=request_id)
        return frame, reply

    @staticmethod
    def _logits_of(frame: Frame) -> np.ndarray:
        logits = frame.tensors.get("logits")
        if logits is None:
            raise AgentError("answered a step without logits", agent=frame.sender)
        return np.array(logits)


__all__ = ["AgentRunner", "Recover"]
