"""Placing an LLM checkpoint tensor-parallel on agents: plan, load, connect the group.

Deploy, in order, each step failing with a typed error before the next: validate the
checkpoint here (`Checkpoint`: config, every tensor's name and shape), plan
(`partitioner.plan_tensor_parallel` over the agents' reported profiles, memory
budgets and measured links: the hub is the agent with the lowest summed latency),
with `quantize="q4"` the shares are 4-bit and must fit resident (`llm_plan.py`),
then `deploy` an "llm-shard" to every agent (it converts its share once into its
cache, off its control loop), wait until every agent is loaded (`llm_ready`, which
returns its collective endpoint), and connect the group (`llm_connect`). Any
failure unloads what was loaded.

`LlmSource` keeps what was asked, so a failover places the same checkpoint again over
the agents still up (`LlmDeployment` in `llm.py`); files the agents' caches already
hold are not sent again, and shares converted before are reused.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from edge_runtime.errors import AgentUnavailableError, ConfigError
from edge_runtime.protocol import (
    COLLECTIVE_TIMEOUT_S,
    Deploy,
    DeployReply,
    LlmConnect,
    LlmConnectReply,
    LlmReady,
    LlmReadyReply,
    Record,
    ShardSpec,
    Unload,
    UnloadReply,
)
from edge_runtime.protocol.kinds import LLM_SHARD
from edge_runtime.protocol.progress import parse_progress
from edge_runtime.sdk.agents import Agents, parse_reply
from edge_runtime.sdk.errors_map import error_from_frame
from edge_runtime.sdk.llm_files import FileSender, Progress, checkpoint_files
from edge_runtime.sdk.llm_plan import (
    Budget,
    blas_threads,
    check_plan,
    check_q4_budgets,
    host_of,
    plan_llm,
    quantize_plan,
)
from edge_runtime.sdk.progress import AgentTasks, as_callback

if TYPE_CHECKING:
    from edge_runtime.llm import LlmConfig
    from partitioner.tensor import TensorPlan

R = TypeVar("R", bound=Record)

log = logging.getLogger(__name__)

READY_POLL_S = 0.5
"""While agents load, their status is polled this often for progress (with a callback)."""


@dataclass(frozen=True)
class LlmSource:
    """A checkpoint and the options it was deployed with (what a re-plan needs)."""

    checkpoint: Path
    config: LlmConfig
    digest: str
    budgets: Mapping[str, int | None]  # per agent name, resolved at the first deploy
    max_context: int
    quantize: str | None
    max_batch: int  # sequences per step: a KV cache slot each on every agent
    send_checkpoint: bool
    threads: int | None
    collective_timeout_s: float | None
    devices: tuple[str, ...] | None  # the agents the app allowed (None: all)
    sync: str = "fp32"  # the allreduces' activation format (`transports.syncformat`)


@dataclass(frozen=True)
class LlmPlacement:
    """One deployment of the checkpoint: its id, plan, agents in rank order, bytes sent."""

    deployment_id: str
    plan: TensorPlan
    names: tuple[str, ...]
    bytes_sent: int

    @property
    def hub(self) -> int:
        return int(self.plan.hub)


def place_llm(cluster: Agents, source: LlmSource, names: Sequence[str],
              plan: TensorPlan | None = None, progress: Progress | None = None) -> LlmPlacement:
    """Plan (unless `plan` is given) and load the checkpoint over `names`."""
    names = list(names)
    budgets = [source.budgets.get(n) for n in names]
    if plan is None:
        # the KV cache of max_batch slots of max_context tokens is that of their product:
        # planning with it makes every share's memory (and window) hold the whole cache
        plan = plan_llm(cluster, source.config, source.digest, names, budgets,
                        source.max_context * source.max_batch, quantize=source.quantize,
                        sync=source.sync)
    else:
        check_plan(plan, source.config, names)
        if source.quantize == "q4":
            plan = quantize_plan(plan, [cluster.info(n).profile for n in names], budgets)
            check_q4_budgets(plan, budgets)
    deployment_id = f"llm-{uuid.uuid4().hex[:10]}"
    keys = tuple(cluster.info(n).public_key for n in names)
    files = checkpoint_files(source.checkpoint)
    blas = (blas_threads(cluster, names) if source.threads is None
            else [source.threads] * len(names))
    sender = FileSender(cluster, source.checkpoint, progress)
    tasks = None if progress is None else AgentTasks(as_callback(progress))
    plan_json = plan.to_json()
    loaded: list[str] = []
    try:
        for rank, name in enumerate(names):
            share = plan.shares[rank]
            spec = ShardSpec(
                checkpoint="" if source.send_checkpoint else str(source.checkpoint),
                checkpoint_digest=source.digest, plan_json=plan_json, rank=rank,
                names=tuple(names), public_keys=keys, max_context=source.max_context,
                memory_budget=budgets[rank], memory_bytes=share.peak_memory_bytes,
                advertise_host=host_of(cluster.info(name).address),
                collective_timeout_s=source.collective_timeout_s or COLLECTIVE_TIMEOUT_S,
                files=tuple(files), blas_threads=blas[rank], quantize=source.quantize,
                max_batch=source.max_batch, sync=source.sync)
            request = Deploy(deployment_id, LLM_SHARD, spec, cluster.hub.session,
                             cluster.timeouts.lease_s)
            # listed before the call: a deploy that timed out here may still finish there
            loaded.append(name)
            reply = cluster.call(name, request, DeployReply, timeout_s=cluster.timeouts.deploy_s)
            if reply.missing_files:
                sender.send(name, deployment_id, list(reply.missing_files))
        ready = await_ready(cluster, names, deployment_id, tasks)
        endpoints = tuple(r.address for r in ready)
        _ask_all(cluster, names, LlmConnect(deployment_id, endpoints), LlmConnectReply,
                 cluster.timeouts.hello_s)
    except BaseException:
        unload_llm(cluster, deployment_id, loaded)
        raise
    log.info("LLM %s deployed as %s over %s (hub %s, %s, sync %s)", source.checkpoint.name,
             deployment_id, names, names[plan.hub], source.quantize or "fp32", source.sync)
    return LlmPlacement(deployment_id, plan, tuple(names), sender.bytes_sent)


def unload_llm(cluster: Agents, deployment_id: str, names: Sequence[str],
               timeout_s: float | None = None) -> None:
    """Unload a deployment's shares, best effort (an agent may be the one that is gone)."""
    problems = []
    for name in names:
        try:
            cluster.call(name, Unload(deployment_id), UnloadReply, timeout_s=timeout_s)
        except Exception as error:  # keep unloading the others; an agent may be gone
            problems.append(str(error))
    if problems:
        log.warning("unload of %s incomplete: %s", deployment_id, "; ".join(problems))


def _send_all(cluster: Agents, names: Sequence[str], request: Record) -> list[tuple[str, int]]:
    """Send `request` to each agent at once: (agent, request id) of each."""
    sent: list[tuple[str, int]] = []
    for name in names:
        request_id = cluster.hub.next_id()
        cluster.hub.send(cluster.link(name), request.frame(request_id),
                         timeout_s=cluster.timeouts.hello_s)
        sent.append((name, request_id))
    return sent


def await_ready(cluster: Agents, names: Sequence[str], deployment_id: str,
                tasks: AgentTasks | None) -> list[LlmReadyReply]:
    """Every agent's `llm_ready` reply. With `tasks`, the agents still loading are asked
    for their status every `READY_POLL_S` meanwhile, and the tasks they report
    (conversion, quantization) become progress events; each reply's final list ends
    them, so a task done between two polls is still told at its total."""
    timeout_s = cluster.timeouts.deploy_s
    if tasks is None:
        return _ask_all(cluster, names, LlmReady(deployment_id), LlmReadyReply, timeout_s)
    hub, deadline = cluster.hub, time.monotonic() + timeout_s
    pending = {request_id: name for name, request_id in
               _send_all(cluster, names, LlmReady(deployment_id))}
    replies: dict[str, LlmReadyReply] = {}
    try:
        while pending:
            until = min(deadline, time.monotonic() + READY_POLL_S)
            try:
                frame = hub.wait(set(pending), max(0.0, until - time.monotonic()),
                                 [cluster.link(n) for n in pending.values()],
                                 f"reply to {LlmReady.KIND}")
            except AgentUnavailableError:
                now = time.monotonic()
                if now < until:  # an agent died or stopped answering heartbeats
                    raise
                if now >= deadline:
                    late = ", ".join(pending.values())
                    raise AgentUnavailableError(
                        f"no reply to {LlmReady.KIND} within {timeout_s:g} s: {late} still "
                        "loading (converting or quantizing its share); raise "
                        "EDGE_RUNTIME_DEPLOY_S (Timeouts.deploy_s) for a model this "
                        "large on these devices",
                        agent=next(iter(pending.values()))) from None
                for name in pending.values():
                    tasks.update(name, parse_progress(
                        cluster.deployment_status(name, deployment_id), f"{name} status"))
                continue
            name = pending.pop(frame.request_id)
            if frame.is_error:
                raise error_from_frame(frame, name)
            reply = parse_reply(LlmReadyReply, frame.meta, name, LlmReady.KIND)
            tasks.update(name, parse_progress(reply.status, f"{name} llm_ready status"))
            replies[name] = reply
    except BaseException:
        hub.forget(pending)
        raise
    return [replies[name] for name in names]


def _ask_all(cluster: Agents, names: Sequence[str], request: Record, reply_type: type[R],
             timeout_s: float) -> list[R]:
    """Send `request` to each agent at once, then collect every reply (typed errors)."""
    hub, kind = cluster.hub, request.KIND
    sent = _send_all(cluster, names, request)
    replies: list[R] = []
    try:
        for name, request_id in sent:
            frame = hub.wait({request_id}, timeout_s, [cluster.link(name)], f"reply to {kind}")
            if frame.is_error:
                raise error_from_frame(frame, name)
            replies.append(parse_reply(reply_type, frame.meta, name, kind))
    except BaseException:
        hub.forget(request_id for _, request_id in sent)
        raise
    return replies


def check_names(cluster: Agents, names: Sequence[str]) -> None:
    if not names:
        raise ConfigError("no agents to deploy on")
    if len(set(names)) != len(names):
        raise ConfigError(f"devices lists an agent twice: {list(names)}")
    for name in names:
        cluster.link(name)  # ConfigError naming the known agents


__all__ = ["Budget", "LlmPlacement", "LlmSource", "check_names", "place_llm", "unload_llm"]
