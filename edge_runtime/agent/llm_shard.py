"""The "llm-shard" deployment type: one agent's tensor-parallel share of an LLM.

Lifecycle, driven by the coordinator (`edge_runtime.sdk.llm`):

1. `deploy` (type "llm-shard"): the spec names the checkpoint directory, its digest
   and files, the tensor plan, this agent's rank and the group's public keys. An
   agent reads the directory in place only if its own `--allow-checkpoint-dir`s hold
   it; otherwise the deploy reply lists the files it lacks in its content-addressed
   cache, and the coordinator sends them (`llm_put`, acknowledged 1 MiB chunks, each
   file sha256-checked, then the set checked against the digest; `llm_files.py`).
   `load` queues the real work on the share's job thread (`llm_jobs.py`), which
   checks the checkpoint against the digest (every byte; `llm_load.py`), converts
   this share ONCE into `<cache>/llm/` (keyed by digest and share ranges: a redeploy reuses it after
   re-hashing), builds the `TensorWorker` (KV cache for `max_context`, window sized by
   the budget; `quantize="q4"`: 4-bit kernels built from the cached fp32 slices at
   each load, or int8 blocks streamed when the budget cannot take them) and binds its
   collective listener (`llm_group.py`). Progress: `status` (`llm_status.py`).
2. `llm_ready`: answered once loading finished (the listener's address) or failed.
3. `llm_connect`: the coordinator sends every member's endpoint; the agent joins the
   `CollectiveGroup` (one DEALER per peer, kept for the deployment's life).
4. `llm_step` (no per-token setup, msgpack header + one int64 tensor): every agent
   runs its worker with the group's allreduce (the algorithm the plan chose for the
   payload's size from measured links, `TensorPlan.allreduce`; a star around the
   plan's hub when it chose none; messages sealed, see `llm_group.py`) and
   ends the step at the hub (`llm_sampler.py`): a step with `sampling` is answered
   with each sequence's next token, sampled on the hub from the members' candidates
   (greedy, top-k) or logits columns; a step without answers the gathered logits.
   Any member's failure answers the coordinator with the typed error; a collective
   timeout names the silent member by its agent name (`AgentUnavailableError`).
   A step with `decode_tokens` runs the decode loop here (`llm_decode.py`): the hub
   broadcasts each sampled token to the members, who feed it without the coordinator,
   and answers each token as it goes; `llm_cancel` (read on the control loop, not
   queued) ends the run at its next token.

Emulated devices: compute between two sync points is dilated (`ctx.dilate`) before
each collective, so a Pi-like agent really holds the others up as a Pi would.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_runtime.agent.deployments import AgentContext
from edge_runtime.agent.heap import return_free_memory
from edge_runtime.agent.llm_decode import decode_run
from edge_runtime.agent.llm_files import CheckpointInbox
from edge_runtime.agent.llm_group import ShardGroup
from edge_runtime.agent.llm_jobs import Job, JobThread, limit_blas
from edge_runtime.agent.llm_load import build_worker, checkpoint_source
from edge_runtime.agent.llm_sampler import HubSampler
from edge_runtime.agent.llm_status import LoadProgress, share_status
from edge_runtime.agent.llm_timing import reset_peak_rss
from edge_runtime.agent.tracing import ShareTracer
from edge_runtime.errors import (
    DeployError,
    EdgeRuntimeError,
    InputError,
    is_user_error,
)
from edge_runtime.protocol import (
    LlmCancel,
    LlmConnect,
    LlmConnectReply,
    LlmHidden,
    LlmPut,
    LlmPutReply,
    LlmReady,
    LlmReadyReply,
    LlmStep,
    LlmStepReply,
    Message,
    ShardSpec,
    StepSampling,
)
from transports.cost import pick
from transports.errors import CollectiveError
from transports.wire import Frame, error_frame

if TYPE_CHECKING:
    from edge_runtime.llm.worker import Span

log = logging.getLogger(__name__)

# How long `close()` waits for the worker thread to finish the job it is running.
WORKER_JOIN_TIMEOUT_S = 5.0
def estimate_memory(spec: ShardSpec, ctx: AgentContext) -> int:
    """The plan's peak bytes for this share (weights or window, KV cache, activations)."""
    return spec.memory_bytes


def step_spans(message: LlmStep | LlmHidden, ids: np.ndarray) -> list[Span]:
    """Each sequence of a step: its KV slot, its ids (in turn in `ids`) and positions."""
    from edge_runtime.llm.worker import Span

    bounds = np.cumsum([0, *message.lengths])
    return [Span(slot, ids[lo:hi], np.arange(start, start + (hi - lo)))
            for slot, start, lo, hi in zip(message.slots, message.starts, bounds[:-1],
                                            bounds[1:], strict=True)]


def load(deployment_id: str, shard: ShardSpec, ctx: AgentContext) -> LlmShard:
    shard, inbox = checkpoint_source(shard, ctx)
    return LlmShard(deployment_id, shard, ctx, inbox)


class LlmShard:
    """A loaded (or loading) share with its worker thread and collective group."""

    def __init__(self, deployment_id: str, spec: ShardSpec, ctx: AgentContext,
                 inbox: CheckpointInbox | None = None) -> None:
        from partitioner.tensor import TensorPlan

        self.id = deployment_id
        self.spec = spec
        self._ctx = ctx
        self.plan = TensorPlan.from_json(spec.plan_json)
        if len(self.plan.shares) != len(spec.names):
            raise DeployError(f"the plan has {len(self.plan.shares)} shares for "
                              f"{len(spec.names)} agents; redeploy")
        self.share = self.plan.shares[spec.rank]
        self._worker: Any = None
        self._blas_limit: Any = None
        self._blas_threads: int | None = None
        self._group = ShardGroup(spec, ctx, deployment_id)
        self._tracer = ShareTracer(ctx)  # spans of traced steps (agent/tracing.py)
        self._progress = LoadProgress()  # conversion, quantization: polled via `status`
        self._failed: EdgeRuntimeError | None = None
        # sampled: steps answered with tokens; trace_id: the last traced step's (dashboard)
        # runs: decode runs (`llm_decode.py`) started
        self._counters = {"steps": 0, "tokens": 0, "compute_s": 0.0, "comm_s": 0.0,
                          "load_s": 0.0, "sampled": 0, "trace_id": 0, "runs": 0}
        self._inbox = inbox
        self._cancelled: deque[int] = deque(maxlen=64)  # llm_cancel'ed decode runs
        self._load_queued = False
        self._jobs = JobThread(f"llm-{deployment_id}", self._do, self._release)
        if inbox is None or inbox.complete:
            self._queue_load()

    @property
    def memory_bytes(self) -> int:
        """What the coordinator planned for, plus the packed kernels' copy of the weights
        when the worker built them (a batching share whose budget holds both)."""
        worker = self._worker
        return self.spec.memory_bytes + (0 if worker is None else worker.packed_bytes)

    @property
    def missing_files(self) -> tuple[str, ...]:
        return () if self._inbox is None else tuple(self._inbox.missing())

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.spec.checkpoint) if self._inbox is None else self._inbox.directory

    def _queue_load(self) -> None:
        if not self._load_queued:
            self._load_queued = True
            self._jobs.put(Job("load"))

    # --- control loop side: queue only, never block ---

    def handle(self, sender: bytes, request_id: int, message: Message,
               tensors: dict[str, np.ndarray]) -> None:
        if isinstance(message, LlmPut):
            self._ctx.send_to_client(sender, self._put(request_id, message, tensors))
            return
        if isinstance(message, LlmCancel):  # read by the running decode (not queued)
            self._cancelled.append(message.request_id)
            return
        if not isinstance(message, LlmReady | LlmConnect | LlmStep):
            raise InputError(f"an llm-shard deployment does not take {message.KIND!r} messages")
        self._jobs.put(Job(message.KIND, request_id, sender, message, dict(tensors)))

    def _put(self, request_id: int, message: LlmPut, tensors: dict[str, np.ndarray]) -> Frame:
        """One chunk of a checkpoint file (off the control loop: a 1 MiB append)."""
        if self._inbox is None:
            raise InputError("this agent reads the checkpoint from its path; send no files")
        data = tensors.get("data")
        if data is None or data.dtype != np.uint8 or data.ndim != 1:
            raise InputError("llm_put needs a 1-D uint8 tensor 'data'")
        done = self._inbox.put(message.name, message.offset, data.tobytes(), message.sha256)
        if done and self._inbox.complete:
            self._queue_load()
        return LlmPutReply(self.id, done).frame(request_id, self._ctx.name)

    # --- worker thread ---

    def _do(self, job: Job) -> None:
        try:
            answer = self._run(job)
        except Exception as error:
            if not is_user_error(error):
                log.exception("llm-shard %s: %s job failed", self.id, job.kind)
            if job.kind != "load":
                self._answer_error(job, error)
                return
            self._failed = error if isinstance(error, EdgeRuntimeError) else DeployError(
                f"loading the share failed: {type(error).__name__}: {error}")
            log.error("llm-shard %s failed to load: %s", self.id, error)
            return
        if answer is not None:
            self._ctx.send_to_client(job.client, answer)

    def _run(self, job: Job) -> Frame | None:
        if job.kind == "load":
            self._load()
            return None
        if self._failed is not None:
            raise self._failed
        message = job.message
        if isinstance(message, LlmReady) and self._worker is None:
            missing = self._inbox.missing() if self._inbox is not None else []
            raise DeployError(f"the share is not loaded: checkpoint files {missing} have not "
                              "arrived; redeploy")
        if isinstance(message, LlmReady):
            ready = LlmReadyReply(self.id, self._group.address(), self.status())
            return ready.frame(job.request_id, self._ctx.name)
        if isinstance(message, LlmConnect):
            self._group.connect(message.endpoints)
            connected = LlmConnectReply(self.id, len(self._group.endpoints))
            return connected.frame(job.request_id, self._ctx.name)
        assert isinstance(message, LlmStep)  # `handle` queues nothing else
        return self._step(job, message)

    def _answer_error(self, job: Job, error: BaseException) -> None:
        error_type, agent = type(error).__name__, self._ctx.name
        message = str(error)
        if isinstance(error, CollectiveError):
            culprit = self._group.member_name(error.member)
            error_type, agent = "AgentUnavailableError", culprit or agent
            message = (f"the tensor-parallel group lost {culprit or error.member} during a "
                       f"step ({error}); redeploy the model without it")
        self._ctx.send_to_client(job.client, error_frame(
            job.request_id, error_type, message, sender=self._ctx.name,
            details={"agent": agent, "deployment_id": self.id, "reported_by": self._ctx.name}))

    def _load(self) -> None:
        started = time.perf_counter()
        self._blas_limit, self._blas_threads = limit_blas(self.spec.blas_threads,
                                                          self._ctx.threads)
        self._worker, window = build_worker(self.spec, self.share, self._ctx,
                                            self.checkpoint_dir, self._inbox, self._progress)
        resident = self._worker.window
        self._tracer.watch(resident)  # window block reads and waits of traced steps
        if resident is None:  # 4-bit: kernels built; the fp32 temporaries are gone
            # quantising each fp32 matrix went through temporaries whose freed pages
            # glibc kept: ~40 % of the serving RSS on the reference checkpoint
            return_free_memory()
        elif resident.resident:
            # read the whole share now: the load belongs to the deploy, not the first token
            for index in range(resident.n):
                with resident.use(index):
                    pass
        self._group.listen()
        self._counters["load_s"] = time.perf_counter() - started
        reset_peak_rss()
        log.info("llm-shard %s rank %d loaded in %.2f s (%s, window %s)", self.id,
                 self.spec.rank, self._counters["load_s"], self.spec.quantize or "fp32",
                 "all resident" if window is None else f"{window} B")

    def _step_ids(self, job: Job, message: LlmStep | LlmHidden) -> np.ndarray:
        """The step's token ids, checked against its lengths (a stage's steps too)."""
        if self._group.group is None:
            raise InputError(f"{message.KIND} before llm_connect; redeploy the model")
        ids = job.tensors.get("ids")
        if ids is None or ids.ndim != 1 or ids.dtype.kind not in "iu":
            raise InputError(f"{message.KIND} needs a 1-D integer tensor 'ids'")
        if sum(message.lengths) != len(ids):
            raise InputError(f"{message.KIND}: lengths {list(message.lengths)} add up to "
                             f"{sum(message.lengths)}, but 'ids' holds {len(ids)}")
        return ids

    def _step(self, job: Job, message: LlmStep) -> Frame | None:
        ids = self._step_ids(job, message)
        if message.decode_tokens:
            self._decode(job, message, ids)
            return None
        return self._forward(job, message, step_spans(message, ids), message.sampling,
                             job.arrived, job.request_id)

    def _forward(self, job: Job, message: LlmStep, spans: list[Any],
                 sampling: tuple[StepSampling, ...], arrived: float,
                 request_id: int) -> Frame | None:
        """Run one step of `spans` on this member; the hub's answer (tokens when
        `sampling`, else logits) to `request_id`, None on a member."""
        group, hub = self._group.group, self.plan.hub
        assert group is not None
        clock = self._tracer.step(message.trace_id, request_id, arrived)
        schedule = self.plan.allreduce  # the algorithm per payload size the plan chose

        def allreduce(x: np.ndarray) -> np.ndarray:
            clock.sync()
            out = group.allreduce(x, pick(schedule, x.nbytes), hub)
            clock.synced()
            return out  # read-only is fine: the worker only adds it into its residual

        # sampled steps: the hub samples; greedy or top-k ones gather candidates only
        sampler = HubSampler(sampling, self._worker.config.vocab, self.share.vocab_rows[0])

        def gather(x: np.ndarray) -> np.ndarray | None:
            clock.sync()
            parts = group.gather(sampler.payload(x), hub)
            clock.synced()
            return None if parts is None else sampler.rows(parts)

        logits = self._worker.forward_batch(spans, allreduce, gather,
                                            last_only=message.last_only)
        clock.finish()  # tracing: the compute after the last collective
        counters = self._counters
        counters["steps"] += 1
        counters["tokens"] += sum(len(span.token_ids) for span in spans)
        counters["compute_s"] += clock.compute_s
        counters["comm_s"] += clock.comm_s
        counters["trace_id"] = message.trace_id or counters["trace_id"]
        if logits is None:
            return None
        if sampling:
            tokens, rngs = sampler.draw(logits)
            counters["sampled"] += 1
            reply = LlmStepReply(self.id, clock.compute_s, clock.comm_s, tokens, rngs)
            return reply.frame(request_id, self._ctx.name)
        reply = LlmStepReply(self.id, clock.compute_s, clock.comm_s)
        return reply.frame(request_id, self._ctx.name,
                           {"logits": np.ascontiguousarray(logits, dtype=np.float32)})

    def _decode(self, job: Job, message: LlmStep, ids: np.ndarray) -> None:
        """The decode loop on the agents (`llm_decode.py`): one step per token, the hub
        answering each token to request id `job.request_id + i`."""
        from edge_runtime.llm.worker import Span

        group, hub, slot = self._group.group, self.plan.hub, message.slots[0]
        assert group is not None
        self._counters["runs"] += 1

        def step(feed: np.ndarray, position: int, sampling: tuple[StepSampling, ...],
                 index: int) -> LlmStepReply | None:
            span = Span(slot, feed, np.arange(position, position + len(feed)))
            # the i-th step is traced, and answered, as request id + i
            frame = self._forward(job, message, [span], sampling,
                                  time.time() if index else job.arrived,
                                  job.request_id + index)
            return None if frame is None else LlmStepReply.from_meta(frame.meta)

        def answer(index: int, reply: LlmStepReply) -> None:
            self._ctx.send_to_client(job.client,
                                     reply.frame(job.request_id + index, self._ctx.name))

        try:
            decode_run(message, ids, step, lambda x: group.broadcast(x, hub), answer,
                       lambda: job.request_id in self._cancelled, self.spec.max_context)
        finally:
            with contextlib.suppress(ValueError):
                self._cancelled.remove(job.request_id)

    def status(self) -> dict[str, Any]:
        return share_status(
            spec=self.spec, plan=self.plan, share=self.share, worker=self._worker,
            missing=[] if self._inbox is None else self._inbox.missing(),
            failed=self._failed, memory_bytes=self.memory_bytes,
            blas_threads=self._blas_threads, collective=self._group.status(),
            counters=self._counters, progress=self._progress)

    def close(self) -> None:
        """Stop the worker; it releases the group, window and BLAS limit as it exits, so a
        job still running (a conversion) is never cut off; a step stuck in a collective
        (a member was lost) is cancelled."""
        if self._inbox is not None:  # files still in transit are this deployment's alone
            self._inbox.close()
        self._group.cancel()  # a step stuck waiting on a lost member ends now
        if not self._jobs.stop(WORKER_JOIN_TIMEOUT_S):
            log.warning("llm-shard %s: still busy after %.0f s; it releases its share when "
                        "the running job ends", self.id, WORKER_JOIN_TIMEOUT_S)

    def _release(self) -> None:
        """Runs on the worker thread, once, as it exits."""
        self._group.close()
        if self._worker is not None:
            self._worker.close()
        if self._blas_limit is not None:
            self._blas_limit.restore_original_limits()

