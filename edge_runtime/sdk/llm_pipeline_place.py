"""Placing an LLM as pipeline stages (or hybrid: tensor groups inside stages) on agents.

Planning: `plan_layout` gives the partitioner's strategy planner
(`partitioner.llm_strategy`) the agents' reported profiles, their memory budgets and
the measured agent-to-agent links (`Agents.links`; the coordinator's own link is taken
as the fastest of those, one hop on the same network), and gets a layout of stages
with every strategy's prediction and the reason for the choice.

Deploy, in order, each step failing with a typed error before the next (any failure
unloads what was loaded): `deploy` an "llm-stage" to every agent — its share of its
stage's tensor plan, its group's names and keys, and the agents of the next stage
(their control address and key: activations go agent to agent) — sending the
checkpoint files an agent lacks; `llm_ready` from all (each share loaded, its group
listener's address); `llm_connect` each agent to the endpoints of its own stage's group.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from devices.caps import host_gflops
from devices.profile import DeviceProfile
from edge_runtime.errors import ConfigError
from edge_runtime.protocol import (
    COLLECTIVE_TIMEOUT_S,
    Deploy,
    DeployReply,
    Hop,
    LlmConnect,
    LlmConnectReply,
    LlmStageSpec,
    ShardSpec,
)
from edge_runtime.protocol.kinds import LLM_STAGE
from edge_runtime.sdk.agents import Agents, parse_reply
from edge_runtime.sdk.errors_map import error_from_frame
from edge_runtime.sdk.llm_files import FileSender, Progress, checkpoint_files
from edge_runtime.sdk.llm_place import LlmPlacement, LlmSource, await_ready, unload_llm
from edge_runtime.sdk.llm_plan import blas_threads, host_of
from edge_runtime.sdk.llm_q4 import check_q4_budgets, quantize_plan
from edge_runtime.sdk.progress import AgentTasks, as_callback
from partitioner.errors import InfeasiblePlanError
from partitioner.llm_cost import LinkTable
from partitioner.llm_layout import LlmLayout
from partitioner.llm_strategy import plan_llm_strategy
from partitioner.tensor import DeviceLike
from partitioner.tensor_plan import TensorPlan

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class PipelinePlacement(LlmPlacement):
    """A placement whose agents form stages: `names` every agent in stage order, `plan`
    every share in that order (each with its `layers`; `hub` the agent that answers,
    the last stage's hub; the layout's predicted time), `layout` the stages."""

    layout: LlmLayout

    @property
    def stage_names(self) -> tuple[tuple[str, ...], ...]:
        return self.layout.groups

    @property
    def answering_agent(self) -> str:
        last = self.layout.stages[-1]
        return last.devices[last.plan.hub]


def link_table(cluster: Agents, names: Sequence[str]) -> LinkTable:
    """Measured links between `names` (unmeasured pairs: the default link); the
    coordinator's link: the fastest measured one (it is on the same network); which
    agents share a machine (its host in their address) and its cores."""
    from partitioner.cost import Links

    measured = cluster.links() if len(names) > 1 else []
    table = Links(measured)
    inside = [(link.rtt_s, link.bandwidth_bytes_per_s) for link in measured
              if link.src in names and link.dst in names]
    coordinator = min(inside) if inside else (0.0, float("inf"))
    hosts = [host_of(cluster.info(n).address) for n in names]
    cores = [int(cluster.info(n).profile.cores) for n in names]
    return LinkTable.from_links(list(names), table, coordinator=coordinator, hosts=hosts,
                                cores=cores)


def plan_layout(cluster: Agents, source: LlmSource, names: Sequence[str], strategy: str, *,
                objective: str | None = None, streams: int | None = None) -> LlmLayout:
    """The layout of `strategy` ("auto": the best predicted) over the agents `names`.

    `objective` default: "throughput" when several sequences share a step
    (`source.max_batch` > 1), else "latency"; `streams` default: `source.max_batch`
    (at least 2, so the prediction of many streams is always made). With
    `source.quantize="q4"` every layout is judged with its stages' shares 4-bit (or
    streaming int8 where a budget cannot load them; a layout no budget can take is
    skipped)."""
    budgets = [source.budgets.get(n) for n in names]
    profiles = compute_profiles(cluster, source, names)
    shape = source.config.decoder_shape(source.max_context * source.max_batch)
    return plan_llm_strategy(
        shape, profiles, strategy, memory_budgets=budgets, links=link_table(cluster, names),
        objective=objective or ("throughput" if source.max_batch > 1 else "latency"),
        streams=streams or max(2, source.max_batch), model_digest=source.digest,
        quantize=None if source.quantize is None else q4_stages)


def compute_profiles(cluster: Agents, source: LlmSource, names: Sequence[str]
                     ) -> list[DeviceProfile]:
    """The agents' profiles with the arithmetic their shares get: a profile's fp32 rate
    is all its cores', but a share computes with its BLAS threads (`source.threads`, or
    the host's cores divided among the deployment's agents there) — what a prompt's
    matrix products run at."""
    threads = ([source.threads] * len(names) if source.threads is not None
               else blas_threads(cluster, names))
    out = []
    for name, count in zip(names, threads, strict=True):
        profile = cluster.info(name).profile
        out.append(profile if count is None else dataclasses.replace(
            profile, gflops_fp32=host_gflops(profile, count)))
    return out


def q4_stages(plan: TensorPlan, profiles: Sequence[DeviceLike],
              budgets: Sequence[int | None]) -> TensorPlan:
    """A stage's plan with 4-bit shares (`llm_q4`); `InfeasiblePlanError` when a budget
    can neither load nor stream its share, so the planner passes that layout over."""
    plan = quantize_plan(plan, profiles, budgets)
    try:
        check_q4_budgets(plan, budgets)
    except ConfigError as error:
        raise InfeasiblePlanError(str(error)) from None
    return plan


def place_pipeline(cluster: Agents, source: LlmSource, layout: LlmLayout,
                   progress: Progress | None = None,
                   emulate: tuple[float, float | None] | None = None) -> PipelinePlacement:
    """Load `layout`'s stages on its agents and connect each stage's group. `emulate`
    (benchmarks): (one-way delay s, bytes/s or None) for every message the agents send
    for this deployment (`transports.linkemu`); any layout, one stage included."""
    names = list(layout.devices)
    deployment_id = f"llm-{uuid.uuid4().hex[:10]}"
    files = checkpoint_files(source.checkpoint)
    blas = (blas_threads(cluster, names) if source.threads is None
            else [source.threads] * len(names))
    threads = dict(zip(names, blas, strict=True))
    sender = FileSender(cluster, source.checkpoint, progress)
    loaded: list[str] = []
    groups = layout.groups
    try:
        for k, stage in enumerate(layout.stages):
            members = stage.devices
            keys = tuple(cluster.info(n).public_key for n in members)
            hops = () if k + 1 == len(groups) else tuple(
                Hop(n, cluster.info(n).address, cluster.info(n).public_key, deployment_id)
                for n in groups[k + 1])
            plan_json = stage.plan.to_json()
            for rank, name in enumerate(members):
                share = stage.plan.shares[rank]
                shard = ShardSpec(
                    checkpoint="" if source.send_checkpoint else str(source.checkpoint),
                    checkpoint_digest=source.digest, plan_json=plan_json, rank=rank,
                    names=members, public_keys=keys, max_context=source.max_context,
                    memory_budget=source.budgets.get(name),
                    memory_bytes=share.peak_memory_bytes,
                    advertise_host=host_of(cluster.info(name).address),
                    collective_timeout_s=source.collective_timeout_s or COLLECTIVE_TIMEOUT_S,
                    files=tuple(files), blas_threads=threads[name],
                    quantize=source.quantize,
                    max_batch=source.max_batch)
                delay, rate = emulate or (0.0, None)
                spec = LlmStageSpec(shard, k, len(groups), hops, delay, rate)
                request = Deploy(deployment_id, LLM_STAGE, spec, cluster.hub.session,
                                 cluster.timeouts.lease_s)
                loaded.append(name)
                reply = cluster.call(name, request, DeployReply,
                                     timeout_s=cluster.timeouts.deploy_s)
                if reply.missing_files:
                    sender.send(name, deployment_id, list(reply.missing_files))
        addresses = dict(zip(names, _ready(cluster, deployment_id, names, progress), strict=True))
        _connect(cluster, deployment_id, groups, addresses)
    except BaseException:
        unload_llm(cluster, deployment_id, loaded)
        raise
    log.info("LLM %s deployed as %s: %s over %s", source.checkpoint.name, deployment_id,
             layout.strategy, " | ".join("+".join(g) for g in groups))
    return PipelinePlacement(deployment_id, flat_plan(layout), tuple(names), sender.bytes_sent,
                             layout)


def flat_plan(layout: LlmLayout) -> TensorPlan:
    """Every share of the layout in stage order as one plan (a view for the app: status
    tables, predicted against measured), its hub the agent that answers."""
    last = layout.stages[-1]
    names = list(layout.devices)
    return TensorPlan(
        shape=layout.shape, shares=tuple(s for st in layout.stages for s in st.plan.shares),
        hub=names.index(last.devices[last.plan.hub]),
        predicted_s_per_token=layout.predicted_s_per_token, model_digest=layout.model_digest,
        strategy=layout.strategy,
        notes=(f"{layout.strategy} layout of {len(layout.stages)} stages: {layout.reason}",))


def _ready(cluster: Agents, deployment_id: str, names: Sequence[str],
           progress: Progress | None = None) -> list[str]:
    """Every agent's group listener address, once its share is loaded. With `progress`,
    the stages' conversion is polled and told as the tensor-parallel deploy tells it
    (`llm_place.await_ready`: status polls, then each `llm_ready` reply's final list)."""
    tasks = None if progress is None else AgentTasks(as_callback(progress))
    return [r.address for r in await_ready(cluster, names, deployment_id, tasks)]


def _connect(cluster: Agents, deployment_id: str, groups: Sequence[Sequence[str]],
             addresses: dict[str, str]) -> None:
    asks = [(n, LlmConnect(deployment_id, tuple(addresses[m] for m in group)))
            for group in groups for n in group]
    _each(cluster, asks, cluster.timeouts.hello_s)


def _each(cluster: Agents, asks: Sequence[tuple[str, LlmConnect]], timeout_s: float,
          ) -> list[LlmConnectReply]:
    """Send each agent its own `llm_connect` at once, then collect every reply (typed
    errors)."""
    hub = cluster.hub
    sent: list[tuple[str, int]] = []
    for name, request in asks:
        request_id = hub.next_id()
        hub.send(cluster.link(name), request.frame(request_id),
                 timeout_s=cluster.timeouts.hello_s)
        sent.append((name, request_id))
    out: list[LlmConnectReply] = []
    try:
        for (name, request_id), (_, request) in zip(sent, asks, strict=True):
            frame = hub.wait({request_id}, timeout_s, [cluster.link(name)],
                             f"reply to {request.KIND}")
            if frame.is_error:
                raise error_from_frame(frame, name)
            out.append(parse_reply(LlmConnectReply, frame.meta, name, request.KIND))
    except BaseException:
        hub.forget(request_id for _, request_id in sent)
        raise
    return out


__all__ = ["PipelinePlacement", "link_table", "place_pipeline", "plan_layout"]
