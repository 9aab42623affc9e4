"""The "llm-stage" deployment type: one agent's share of one stage of a pipelined LLM.

A stage is a tensor-parallel group (one agent for a plain pipeline, several for a
hybrid) over a contiguous range of layers; it is an "llm-shard" in every respect —
checkpoint files, conversion, window, KV cache, group listener and connect, status —
except for the data path of a step, which this module adds:

- the first stage takes `llm_step` from the coordinator (token ids); a later stage
  takes `llm_hidden` from the previous stage's hub (ids and hidden states, and the
  coordinator's routing identity), so activations go agent to agent over the agents'
  authenticated control sockets (`ctx.send_to_peer`, as the ONNX pipeline's stages do),
  never through the coordinator;
- every member runs its layers (`TensorWorker` with the share's `layers`), summing
  partial results within its group as a tensor-parallel share does;
- the group's hub then sends the hidden states to every agent of the next stage, or,
  in the last stage, answers the coordinator with the logits (`LlmStepReply`, the
  step's request id; compute and comm summed over the stages).

Each agent's job queue runs steps in arrival order, so the coordinator may send the
micro-batches of a step back to back: stage k works on micro-batch i+1 while stage k+1
works on micro-batch i. Each layer's KV cache lives only on the agents of its stage.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from edge_runtime.agent.deployments import AgentContext
from edge_runtime.agent.llm_files import CheckpointInbox
from edge_runtime.agent.llm_group import ShardGroup
from edge_runtime.agent.llm_jobs import Job
from edge_runtime.agent.llm_load import checkpoint_source
from edge_runtime.agent.llm_shard import LlmShard, step_spans
from edge_runtime.agent.llm_stage_links import (
    DelayedSender,
    EmulatedShardGroup,
    emulator,
    frame_bytes,
)
from edge_runtime.agent.llm_timing import StepClock
from edge_runtime.errors import DeployError, InputError
from edge_runtime.protocol import LlmHidden, LlmStageSpec, LlmStep, LlmStepReply, Message
from transports.cost import pick
from transports.wire import Frame


def estimate_memory(spec: LlmStageSpec, ctx: AgentContext) -> int:
    """The plan's peak bytes for this share of the stage (weights or window, its layers'
    KV cache, activations)."""
    return spec.shard.memory_bytes


def load(deployment_id: str, spec: LlmStageSpec, ctx: AgentContext) -> LlmStage:
    shard, inbox = checkpoint_source(spec.shard, ctx)
    return LlmStage(deployment_id, dataclasses.replace(spec, shard=shard), ctx, inbox)


def _stage_budget(spec: LlmStageSpec) -> LlmStageSpec:
    """The shard's budget as the share's window rule needs it.

    The share's worker sizes its window as budget − KV cache of *every* layer − reserve
    (`llm.local.window_budget`); a stage caches only its own layers (the cache of the
    others is allocated but never touched, so it costs no memory). The budget handed to
    that rule is raised by the difference, so the window is budget − this stage's KV
    cache − reserve, as the planner counted (`llm.pipeline.stage_window_budget`)."""
    from partitioner.tensor import TensorPlan

    shard = spec.shard
    if shard.memory_budget is None:
        return spec
    plan = TensorPlan.from_json(shard.plan_json)
    share = plan.shares[shard.rank]
    first, end = share.layer_range(plan.shape.layers)
    per_layer = 2 * share.n_kv_heads * shard.max_context * plan.shape.head_dim * 4
    unused = (plan.shape.layers - (end - first)) * per_layer * shard.max_batch
    return dataclasses.replace(spec, shard=dataclasses.replace(
        shard, memory_budget=shard.memory_budget + unused))


class LlmStage(LlmShard):
    """A loaded (or loading) stage share: an llm-shard whose steps flow stage to stage."""

    def __init__(self, deployment_id: str, spec: LlmStageSpec, ctx: AgentContext,
                 inbox: CheckpointInbox | None = None) -> None:
        self.stage_spec = spec
        seed = spec.stage * 1000 + spec.shard.rank
        self._emulation = emulator(spec.emulate_delay_s, spec.emulate_bandwidth, seed)
        self._sender = None if self._emulation is None else DelayedSender(self._emulation)
        super().__init__(deployment_id, _stage_budget(spec).shard, ctx, inbox)
        first, end = self.share.layer_range(self.plan.shape.layers)
        if (spec.stage == 0) != (first == 0) or (
                spec.stage == spec.n_stages - 1) != (end == self.plan.shape.layers):
            raise DeployError(f"stage {spec.stage} of {spec.n_stages} holds layers "
                              f"{first}..{end - 1}: the layout and the spec disagree; redeploy")

    @property
    def _group(self) -> ShardGroup:
        return self._stage_group

    @_group.setter
    def _group(self, group: ShardGroup) -> None:
        """The share's group, its links emulated when the spec asks (set by LlmShard)."""
        if self._emulation is not None and not isinstance(group, EmulatedShardGroup):
            group = EmulatedShardGroup(group, self._emulation)
        self._stage_group = group

    def _send(self, peer: str, frame: Frame, action: Callable[[], None]) -> None:
        """Send now, or when the emulated link would have delivered the frame."""
        if self._sender is None:
            action()
        else:
            self._sender.send(peer, frame_bytes(dict(frame.tensors)), action)

    @property
    def first(self) -> bool:
        return self.stage_spec.stage == 0

    @property
    def last(self) -> bool:
        return self.stage_spec.stage == self.stage_spec.n_stages - 1

    def handle(self, sender: bytes, request_id: int, message: Message,
               tensors: dict[str, np.ndarray]) -> None:
        if isinstance(message, LlmHidden):
            if self.first:
                raise InputError("the first stage takes llm_step, not hidden states")
            self._jobs.put(Job(message.KIND, request_id, message.client, message,
                                 dict(tensors)))
            return
        if isinstance(message, LlmStep) and not self.first:
            raise InputError(f"stage {self.stage_spec.stage} takes hidden states from the "
                             "stage before it, not llm_step; send steps to the first stage")
        if isinstance(message, LlmStep) and (message.decode_tokens or message.sampling):
            raise InputError("a pipelined LLM answers logits step by step: send llm_step "
                             "without decode_tokens or sampling (the coordinator samples)")
        super().handle(sender, request_id, message, tensors)

    def _run(self, job: Job) -> Frame | None:
        if isinstance(job.message, LlmHidden):
            if self._failed is not None:
                raise self._failed
            return self._stage_step(job, job.message)
        return super()._run(job)

    def _step(self, job: Job, message: LlmStep) -> Frame | None:
        return self._stage_step(job, message)

    def _stage_step(self, job: Job, message: LlmStep | LlmHidden) -> Frame | None:
        ids = self._step_ids(job, message)
        hidden = None
        if isinstance(message, LlmHidden):
            hidden = job.tensors.get("hidden")
            if hidden is None or hidden.ndim != 2 or hidden.dtype != np.float32:
                raise InputError("llm_hidden needs a 2-D float32 tensor 'hidden'")
        spans = step_spans(message, ids)
        group, hub, clock = self._group.group, self.plan.hub, StepClock(self._ctx)
        assert group is not None  # `_step_ids` refused a step before llm_connect
        schedule = self.plan.allreduce  # per payload size, as the planner priced it

        def allreduce(x: np.ndarray) -> np.ndarray:
            clock.sync()
            out = group.allreduce(x, pick(schedule, x.nbytes), hub)
            clock.synced()
            return np.array(out)

        def gather(x: np.ndarray) -> np.ndarray | None:
            clock.sync()
            parts = group.gather(np.ascontiguousarray(x), hub)
            clock.synced()
            return None if parts is None else np.concatenate(parts, axis=-1)

        out = self._worker.forward_batch(spans, allreduce, gather,
                                         last_only=message.last_only, hidden=hidden)
        clock.sync()  # the compute after the last collective, dilated like the rest
        if isinstance(self._group, EmulatedShardGroup):
            self._group.drain()
        counters = self._counters
        counters["steps"] += 1
        counters["tokens"] += len(ids)
        counters["compute_s"] += clock.compute_s
        counters["comm_s"] += clock.comm_s
        before = ((message.compute_s, message.comm_s) if isinstance(message, LlmHidden)
                  else (0.0, 0.0))
        if out is None or group.rank != hub:
            return None  # a member of the group; its hub hands the step on
        compute, comm = before[0] + clock.compute_s, before[1] + clock.comm_s
        if self.last:
            reply = LlmStepReply(self.id, compute, comm).frame(
                job.request_id, self._ctx.name,
                {"logits": np.ascontiguousarray(out, dtype=np.float32)})
            if self._sender is None:
                return reply
            client = job.client
            self._send("coordinator", reply, lambda: self._ctx.send_to_client(client, reply))
            return None
        onward = LlmHidden(self.id, job.client, self.stage_spec.stage, tuple(message.slots),
                           tuple(message.starts), tuple(message.lengths), message.last_only,
                           compute, comm)
        tensors: dict[str, np.ndarray] = {"ids": np.ascontiguousarray(ids, dtype=np.int64),
                   "hidden": np.ascontiguousarray(out, dtype=np.float32)}
        sent = time.perf_counter()
        for hop in self.stage_spec.next_hops:
            frame = onward.frame(job.request_id, self._ctx.name, tensors)
            self._send(hop.name, frame, functools.partial(self._ctx.send_to_peer, hop, frame))
        counters["comm_s"] += time.perf_counter() - sent
        return None

    def close(self) -> None:
        super().close()
        if self._sender is not None:
            self._sender.close()

    def status(self) -> dict[str, Any]:
        out = super().status()
        out.update({"type": "llm-stage", "stage": self.stage_spec.stage,
                    "n_stages": self.stage_spec.n_stages,
                    "layers": list(self.share.layer_range(self.plan.shape.layers)),
                    "next": [h.name for h in self.stage_spec.next_hops]})
        return out


__all__ = ["LlmStage", "estimate_memory", "load"]
