"""The "onnx-stage" deployment type: one stage of a pipeline, with its exit.

Each stage owns a worker thread and a queue, so the control loop keeps answering
pings while a stage computes, and stage k takes request i+1 while stage k+1 runs
request i (pipelining across agents). The worker never touches a socket: it
hands finished frames to the agent (`ctx.send_to_peer` / `ctx.send_to_client`),
whose control loop owns every socket.

A short request on an idle stage runs where it is received, on the control loop
(`INLINE_MAX_S`): two thread hand-offs (loop → worker, worker → loop through the
agent's pipe) cost ~0.2 ms on a small CPU, a few percent of a ~5 ms stage, while
blocking the loop for at most a few ms delays nothing that matters (heartbeats
time out after seconds). Only when nothing is queued or running, so requests
never overtake each other; never on an emulated device (its dilation sleeps).

Data path of one request: the coordinator sends `run` (model inputs) to stage 0;
each stage runs its shard, then either answers the coordinator with `result`
(last stage, or its exit fired) or sends `activation` to the next stage's agent
with the tensors of `spec.forward` (shard outputs and pass-through inputs). The
model outputs a stage produces (an exit head that did not fire) go to the
coordinator once, in a partial `result` of their own, not along every later hop;
what later exits' patience rules read of them travels on as one predicted class
per row (`stage_exits.py`), and the answer names the outputs sent so
(`elsewhere`) for the coordinator to merge.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from edge_runtime.agent.config import SHARD_MEMORY_FACTOR
from edge_runtime.agent.deployments import AgentContext
from edge_runtime.agent.stage_exits import exit_fires, votes_of
from edge_runtime.agent.tracing import ring_for
from edge_runtime.backends import Backend, open_backend
from edge_runtime.backends.base import check_feeds
from edge_runtime.errors import AgentBusyError, DeployError, EdgeRuntimeError, InputError
from edge_runtime.protocol import (
    ACT_PREFIX,
    OUT_PREFIX,
    Activation,
    Message,
    Run,
    RunResult,
    SetExit,
    SetExitReply,
    StageSpec,
    StageTiming,
)
from edge_runtime.protocol.kinds import VOTE_PREFIX
from transports.wire import Frame, error_frame

log = logging.getLogger(__name__)

# How long `close()` waits for the worker to finish the request it is running.
WORKER_JOIN_TIMEOUT_S = 5.0
# Request ids remembered per stage to drop second copies: far more than can be in
# flight (a coordinator keeps `max_in_flight`, 8 by default), a few hundred KB at most.
SEEN_REQUESTS = 4096
INLINE_MAX_S = 0.025
"""A stage whose last request computed in less than this runs the next one on the
control loop when it is idle (see the module's docstring); a slower one, or the first
request of a stage (no measurement yet), goes to the worker thread."""


def estimate_memory(stage: StageSpec, ctx: AgentContext) -> int:
    """The plan's `memory_bytes` if given, else the shard's size × SHARD_MEMORY_FACTOR."""
    if stage.memory_bytes is not None:
        return stage.memory_bytes
    path = ctx.cache.path_for(stage.shard_sha256, stage.shard_ext)
    if not path.is_file():
        raise DeployError(f"shard {stage.shard_sha256[:12]}… is not on this agent; send it first")
    return int(path.stat().st_size * SHARD_MEMORY_FACTOR)


def load(deployment_id: str, stage: StageSpec, ctx: AgentContext) -> OnnxStage:
    """Open the verified shard (the handler already admitted `stage.allow_keys`)."""
    path = ctx.cache.verified_path(stage.shard_sha256, stage.shard_ext)
    backend = open_backend(path, threads=ctx.threads)
    return OnnxStage(stage, backend, ctx, estimate_memory(stage, ctx))


@dataclass(frozen=True)
class _Work:
    request_id: int
    client: bytes
    acts: dict[str, np.ndarray]  # activations and model inputs, by name (no prefix)
    collected: dict[str, np.ndarray]  # model outputs carried here (from older agents)
    votes: dict[str, np.ndarray]  # earlier exit outputs' predicted classes
    elsewhere: tuple[str, ...]  # model outputs earlier stages sent the coordinator
    timings: tuple[StageTiming, ...]  # of the stages before this one
    arrived: float  # perf_counter at arrival
    transfer_s: float
    trace: tuple[int, float, float, str] = (0, 0.0, 0.0, "")  # traced: id, sent, arrived, from


class OnnxStage:
    """A loaded pipeline stage with its worker thread."""

    def __init__(
        self, spec: StageSpec, backend: Backend, ctx: AgentContext, memory_bytes: int
    ) -> None:
        self.spec = spec
        self._backend = backend
        self._ctx = ctx
        self._memory = memory_bytes
        self._signature = spec.signature
        # every tensor a request must bring: what the plan forwards on, what the shard reads
        self._needed = frozenset([*spec.inputs, *(s.name for s in backend.inputs)])
        self._queue_limit = ctx.config.timeouts.stage_queue
        self._queue: queue.Queue[_Work | None] = queue.Queue()
        self._served = 0
        self._busy_s = 0.0
        self._seen: OrderedDict[tuple[bytes, int], None] = OrderedDict()
        # requests handed to the worker / finished by it: each written by one thread only
        # (the loop / the worker), so `_queued == _done` means the worker is idle
        self._queued = 0
        self._done = 0
        self._last_compute_s = float("inf")  # nothing measured yet: the worker first
        self._ring = ring_for(ctx.name)  # spans of traced requests (agent/tracing.py)
        self.duplicates = 0
        self._worker = threading.Thread(
            target=self._loop, name=f"stage-{spec.deployment_id}-{spec.stage}", daemon=True
        )
        self._worker.start()

    @property
    def memory_bytes(self) -> int:
        return self._memory

    @property
    def missing_files(self) -> tuple[str, ...]:
        return ()

    def handle(self, sender: bytes, request_id: int, message: Message,
               tensors: dict[str, np.ndarray]) -> None:
        if isinstance(message, SetExit):
            self._set_exit(sender, request_id, message)
            return
        timings: tuple[StageTiming, ...] = ()
        collected: dict[str, np.ndarray] = {}
        votes: dict[str, np.ndarray] = {}
        elsewhere: tuple[str, ...] = ()
        if isinstance(message, Run):
            if self.spec.stage != 0:
                raise InputError(f"stage {self.spec.stage} takes activations, not run requests")
            if self._signature:
                check_feeds(self._signature, tensors)
            acts = tensors
            client = sender
        elif isinstance(message, Activation):
            acts = {}
            for key, value in tensors.items():
                if key.startswith(ACT_PREFIX):
                    acts[key[len(ACT_PREFIX):]] = value
                elif key.startswith(VOTE_PREFIX):
                    votes[key[len(VOTE_PREFIX):]] = value
                elif key.startswith(OUT_PREFIX):
                    collected[key[len(OUT_PREFIX):]] = value
            client, timings, elsewhere = message.client, message.timings, message.elsewhere
        else:
            raise InputError(f"an onnx-stage deployment does not take {message.KIND!r} messages")
        if self._already_seen(client, request_id):
            return
        now = time.time()
        transfer_s = max(0.0, now - message.sent_at)
        trace = (message.trace_id, message.sent_at, now, timings[-1].agent if timings else "")
        work = _Work(request_id, client, acts, collected, votes, elsewhere, timings,
                     time.perf_counter(), transfer_s, trace)
        if (self._queued == self._done and self._last_compute_s < INLINE_MAX_S
                and not self._ctx.emulated):
            self._serve_or_answer(work)  # idle and quick: here, on the control loop
            return
        if self._queue.qsize() >= self._queue_limit:  # only this loop thread adds work
            raise AgentBusyError(f"stage {self.spec.stage} already has {self._queue_limit} "
                                 "requests waiting; retry later", agent=self._ctx.name)
        self._queued += 1
        self._queue.put(work)

    def _already_seen(self, client: bytes, request_id: int) -> bool:
        """True for a request id this stage took before from the same client: it is
        dropped, so a frame delivered twice (a coordinator re-sending an attempt, a
        reconnect replaying a queue) is computed and answered once."""
        key = (client, request_id)
        if key in self._seen:
            self.duplicates += 1
            log.info("stage %d: dropping a second copy of request %d", self.spec.stage,
                     request_id)
            return True
        self._seen[key] = None
        if len(self._seen) > SEEN_REQUESTS:
            self._seen.popitem(last=False)
        return False

    def _set_exit(self, sender: bytes, request_id: int, message: SetExit) -> None:
        """Replace this stage's exit rule (a new threshold; None: never stop here).

        Only the rule changes, not the shard, so no session is rebuilt. The worker
        reads `self.spec` once per request, so a request in progress finishes under
        the rule it started with and the next one uses the new rule.
        """
        rule = message.exit
        if rule is not None and rule.output not in self.spec.outputs:
            raise InputError(f"stage {self.spec.stage} does not produce {rule.output!r} (it "
                             f"produces {list(self.spec.outputs)}); set that exit's threshold "
                             "on the stage that ends at it")
        self.spec = replace(self.spec, exit=rule)
        self._ctx.send_to_client(sender, SetExitReply(self.spec.deployment_id, rule).frame(
            request_id, self._ctx.name))

    def _loop(self) -> None:
        while True:
            work = self._queue.get()
            if work is None:
                return
            try:
                self._serve_or_answer(work)
            finally:
                self._done += 1

    def _serve_or_answer(self, work: _Work) -> None:
        """Serve `work`, or answer its client with the error that stopped it."""
        try:
            self._serve(work)
        except Exception as error:  # answer the request; the stage keeps serving
            if not isinstance(error, EdgeRuntimeError):
                log.exception("stage %d failed on request %d", self.spec.stage, work.request_id)
            self._ctx.send_to_client(
                work.client,
                error_frame(
                    work.request_id,
                    type(error).__name__,
                    str(error),
                    sender=self._ctx.name,
                    details={"agent": self._ctx.name,
                             "deployment_id": self.spec.deployment_id},
                ),
            )

    def _serve(self, work: _Work) -> None:
        spec = self.spec
        start = time.perf_counter()
        started_at = time.time()
        queue_s = start - work.arrived
        acts, collected = work.acts, work.collected
        if not self._needed <= acts.keys():
            missing = sorted(self._needed - acts.keys())
            raise InputError(f"stage {spec.stage} did not receive {missing}; the previous "
                             "stage's plan does not match this one — redeploy the model")
        feeds = {s.name: acts[s.name] for s in self._backend.inputs}
        produced = self._backend.run(feeds)
        busy = time.perf_counter() - start
        self._ctx.dilate(busy)
        compute_s = time.perf_counter() - start
        self._last_compute_s = compute_s
        self._served += 1
        self._busy_s += compute_s
        available = {**acts, **produced}
        own = {name: available[name] for name in spec.outputs}
        timings = (*work.timings, StageTiming(spec.stage, self._ctx.name, queue_s, compute_s,
                                              work.transfer_s, self._ctx.emulated, started_at))
        fired = spec.exit is not None and exit_fires(spec.exit, available,
                                                     {**collected, **own}, work.votes)
        last = spec.stage == spec.n_stages - 1 or spec.next_hop is None
        self._record(work, started_at, compute_s)
        # each frame is stamped `sent_at` now so the receiver can measure its transfer time
        if fired or last:
            exit_name = spec.exit.name if fired and spec.exit is not None else None
            result = RunResult(spec.deployment_id, exit_name, spec.stage, timings, time.time(),
                               elsewhere=work.elsewhere)
            self._send_result(work, result, {**collected, **own})
            return
        assert spec.next_hop is not None  # guarded by `last` above
        elsewhere = work.elsewhere
        if own:  # this stage's outputs go to the coordinator once, not along every hop
            self._send_result(work, RunResult(spec.deployment_id, None, spec.stage, timings,
                                              time.time(), partial=True), own)
            elsewhere = (*elsewhere, *own)
        tensors = {f"{ACT_PREFIX}{name}": available[name] for name in spec.forward}
        tensors.update({f"{OUT_PREFIX}{name}": value for name, value in collected.items()})
        tensors.update({f"{VOTE_PREFIX}{name}": value for name, value in work.votes.items()})
        for name, value in own.items():
            vote = votes_of(value)
            if vote is not None:
                tensors[f"{VOTE_PREFIX}{name}"] = vote
        onward = Activation(spec.next_hop.deployment_id, work.client, spec.stage + 1, timings,
                            time.time(), work.trace[0], elsewhere)
        frame = self._frame(onward, work, tensors)
        self._ring.record(work.trace[0], work.request_id, "send", "activation", onward.sent_at)
        self._ctx.send_to_peer(spec.next_hop, frame)

    def _send_result(self, work: _Work, result: RunResult,
                     tensors: dict[str, np.ndarray]) -> None:
        """Answer the coordinator: the result, or (`result.partial`) this stage's outputs."""
        frame = self._frame(result, work, tensors)
        what = "partial" if result.partial else "result"
        self._ring.record(work.trace[0], work.request_id, "send", what, result.sent_at)
        self._ctx.send_to_client(work.client, frame)  # after: its receipt may come first

    def _record(self, work: _Work, started_at: float, compute_s: float) -> None:
        """A traced request's spans here: its frame's flight (from the sender's stamp),
        its wait in this stage's queue, its compute (nothing when it was not traced)."""
        trace_id, sent_at, arrived_at, sender = work.trace
        if not trace_id:
            return
        ring, rid, stage = self._ring, work.request_id, f"stage {self.spec.stage}"
        ring.record(trace_id, rid, "receive", "run" if self.spec.stage == 0 else "activation",
                    arrived_at, arrived_at, peer=sender, sent_at=sent_at,
                    nbytes=sum(int(v.nbytes) for part in (work.acts, work.collected, work.votes)
                               for v in part.values()))
        ring.record(trace_id, rid, "queue", stage, arrived_at, started_at)
        ring.record(trace_id, rid, "compute", stage, started_at, started_at + compute_s)

    def _frame(self, message: RunResult | Activation, work: _Work,
               tensors: dict[str, np.ndarray]) -> Frame:
        return message.frame(work.request_id, self._ctx.name, tensors)

    def status(self) -> dict[str, Any]:
        return {
            "type": "onnx-stage",
            "stage": self.spec.stage,
            "n_stages": self.spec.n_stages,
            "shard": self.spec.shard_sha256,
            "memory_bytes": self._memory,
            "queued": self._queue.qsize(),
            "served": self._served,
            "duplicates_dropped": self.duplicates,
            "busy_s": round(self._busy_s, 6),
            "exit": None if self.spec.exit is None else self.spec.exit.name,
            "next": None if self.spec.next_hop is None else self.spec.next_hop.name,
            "inputs": [s.describe() for s in self._backend.inputs],
        }

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join(WORKER_JOIN_TIMEOUT_S)
        if self._worker.is_alive():  # still inside a run: the session must outlive it
            log.warning("stage %s still running after %.0f s; leaving its session to the "
                        "garbage collector", self.spec.deployment_id, WORKER_JOIN_TIMEOUT_S)
            return
        self._backend.close()
