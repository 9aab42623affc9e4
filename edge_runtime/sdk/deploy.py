"""`Cluster.deploy`: plan a model over the agents, extract shards, send and load them.

Steps, each logged: analyse the model (`ModelGraph`), measure links between
agents (cached per cluster), plan (`partitioner`), extract one shard per stage,
send only the shards an agent's content-addressed cache lacks (in acknowledged
chunks, with progress), then load stages last-first so every stage's next hop is
ready before the first request can reach it.

Strategies: "single" puts the whole model on the device predicted fastest;
"auto" runs the exact pipeline planner over all agents, which returns one device
when no split beats it (often: a split pays transfers); "pipeline" forces a
split over at least two agents (re-planning for throughput, then with memory
shares, when the latency optimum is one device), for when the model must be
spread or throughput matters.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.errors import ConfigError, DeployError
from edge_runtime.protocol import (
    Deploy,
    DeployReply,
    ExitRule,
    HasShards,
    HasShardsReply,
    Hop,
    PutChunk,
    PutChunkReply,
    ShardRef,
    StageSpec,
    TensorSpec,
    Unload,
    UnloadReply,
)
from edge_runtime.protocol.kinds import ONNX_STAGE
from edge_runtime.sdk.agents import Agents
from edge_runtime.sdk.config import CHUNK_BYTES
from edge_runtime.sdk.exits import exit_rules, exit_thresholds
from edge_runtime.sdk.progress import AnyProgress, ProgressMeter, as_callback
from edge_runtime.sdk.whole_file import WHOLE_FILE_SUFFIXES, whole_file_plan

log = logging.getLogger(__name__)

STRATEGIES = ("auto", "pipeline", "single")


def _exit_names(exits: Any) -> list[str] | None:
    if exits is None:
        return None
    if isinstance(exits, Mapping):
        return [str(k) for k in exits]
    return [e if isinstance(e, str) else e.name for e in exits]


def exit_logits(model: Path, graph: Any, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Every exit head's logits on calibration `inputs` (whole model, local onnxruntime)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    outputs = [head.output for head in graph.exits]
    return [np.asarray(x) for x in session.run(outputs, dict(inputs))]


def make_plan(cluster: Agents, model: Path, strategy: str, exits: Any, objective: str,
              batch_size: int, devices: Sequence[str] | None, slo_ms: float | None,
              calibration: tuple[Mapping[str, np.ndarray], np.ndarray] | None = None,
              exit_policy: str = "max_prob") -> Any:
    """The plan for `model` on this cluster's agents (pure planning, after link probes)."""
    from partitioner.graph import ModelGraph
    from partitioner.pipeline import plan_pipeline, plan_single

    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    graph = ModelGraph.from_onnx(model, batch_size)
    infos = [cluster.info(n) for n in (devices or cluster.usable())]
    profiles = [info.profile for info in infos]
    budgets = [info.memory_budget for info in infos]
    names = _exit_names(exits)
    if slo_ms is not None:
        from partitioner.exits import plan_with_slo

        if calibration is None:
            raise ConfigError(
                "slo_ms needs labelled calibration data to choose exit thresholds: pass "
                "calibration=(inputs_dict, labels)")
        logits = exit_logits(model, graph, calibration[0])
        links = cluster.links() if len(profiles) > 1 else []
        plan = plan_with_slo(graph, profiles, links, logits, np.asarray(calibration[1]),
                             slo_ms / 1e3, policy=exit_policy, memory_budgets=budgets)
        return plan, graph
    if strategy == "single" or len(profiles) == 1:
        options = [plan_single(graph, prof, memory_budget=b, exits=names)
                   for prof, b in zip(profiles, budgets, strict=True)]
        return min(options, key=lambda plan: plan.predicted_latency_s), graph
    links = cluster.links()
    plan = plan_pipeline(graph, profiles, links, objective=objective, memory_budgets=budgets,
                         exits=names)
    if strategy == "pipeline" and len({s.device for s in plan.stages}) < 2:
        plan = plan_pipeline(graph, profiles, links, objective="throughput",
                             memory_budgets=budgets, exits=names)
    if strategy == "pipeline" and len({s.device for s in plan.stages}) < 2:
        plan = _forced_split(graph, profiles, links, budgets, names, plan)
    return plan, graph


# A link that costs nothing: planning over it with the throughput objective
# splits a model wherever compute can be shared (used to force a "pipeline").
_IDEAL_RTT_S = 0.0
_IDEAL_BANDWIDTH = 1e15


def _forced_split(graph: Any, profiles: list[Any], links: list[Any], budgets: list[int | None],
                  names: list[str] | None, fallback: Any) -> Any:
    """A plan over ≥ 2 devices: the throughput optimum over free links, with its
    transfer predictions then recomputed over the measured links. `fallback` (one
    device) when even that keeps the model whole (a model of one node)."""
    from devices.links import LinkProfile
    from partitioner.cost import Links
    from partitioner.pipeline import plan_pipeline

    ideal = [LinkProfile(a.name, b.name, _IDEAL_RTT_S, _IDEAL_BANDWIDTH)
             for a in profiles for b in profiles if a.name != b.name]
    plan = plan_pipeline(graph, profiles, ideal, objective="throughput",
                         memory_budgets=budgets, exits=names)
    if len({s.device for s in plan.stages}) < 2:
        log.warning("strategy 'pipeline': %s cannot be split over %d devices; deploying on "
                    "one device", graph.name, len(profiles))
        return fallback
    real = Links(links)
    stages = list(plan.stages)
    for i, stage in enumerate(stages[:-1]):
        nxt = stages[i + 1]
        transfer = (real.transfer_time(stage.device, nxt.device, stage.transfer_bytes)
                    if nxt.device != stage.device else 0.0)
        stages[i] = dataclasses.replace(stage, predicted_transfer_s=transfer)
    latency = sum(s.predicted_compute_s + s.predicted_transfer_s for s in stages)
    worst = max(max(s.predicted_compute_s, s.predicted_transfer_s) for s in stages)
    return dataclasses.replace(plan, stages=tuple(stages), predicted_latency_s=latency,
                               predicted_throughput_rps=1.0 / worst if worst > 0 else 0.0)


def upload(cluster: Agents, agent: str, shard: Path, sha256: str,
           progress: AnyProgress | None) -> int:
    """Send `shard` to `agent` unless its cache has it; returns bytes sent. `progress`
    gets a `ProgressEvent` (bytes done, rate, time left) as chunks are acknowledged."""
    ext = shard.suffix
    missing = cluster.call(agent, HasShards((ShardRef(sha256, ext),)), HasShardsReply).missing
    if sha256 not in missing:
        log.info("%s already holds shard %s…", agent, sha256[:12])
        return 0
    data = np.fromfile(shard, dtype=np.uint8)
    total = int(data.size)
    sent = 0
    meter = ProgressMeter(f"sending shard {shard.name}", total, as_callback(progress),
                          agent=agent)
    while True:
        chunk = data[sent:sent + CHUNK_BYTES]
        reply = cluster.call(agent, PutChunk(sha256, ext, sent, total), PutChunkReply,
                             {"data": chunk}, timeout_s=cluster.timeouts.chunk_s)
        sent += int(chunk.size)
        meter.update(sent)
        log.info("sent %s to %s: %d / %d bytes", shard.name, agent, sent, total)
        if reply.complete:
            break
        if sent >= total:
            raise DeployError(f"{agent} did not accept shard {shard.name} after all its bytes")
    return total


def plan_model(cluster: Agents, model: Path, *, strategy: str, exits: Any,
               slo_ms: float | None, objective: str, batch_size: int,
               devices: Sequence[str] | None,
               calibration: tuple[Mapping[str, np.ndarray], np.ndarray] | None = None,
               exit_policy: str = "max_prob") -> Any:
    """`Cluster.plan`: the plan `deploy` would use, without deploying anything.

    Thresholds given as an `exits` mapping are written into the plan's exits, so
    `deploy(plan=...)` applies them without being told again.
    """
    if not model.is_file():
        raise ConfigError(f"no model file at {model}")
    if model.suffix.lower() in WHOLE_FILE_SUFFIXES:
        return whole_file_plan(cluster, model, devices)
    plan, _graph = make_plan(cluster, model, strategy, exits, objective, batch_size, devices,
                             slo_ms, calibration, exit_policy)
    if isinstance(exits, Mapping):
        chosen = exit_thresholds(plan, exits, exit_policy)
        plan = dataclasses.replace(plan, exits=tuple(
            dataclasses.replace(e, policy=chosen[e.name][0], threshold=chosen[e.name][1])
            for e in plan.exits))
    return plan


@dataclass(frozen=True)
class DeploySource:
    """What was asked to be deployed, kept so a failover can plan it again over the
    agents still alive (the first plan may have been given; a re-plan is made)."""

    model: Path
    strategy: str
    exits: Any
    objective: str
    batch_size: int
    devices: tuple[str, ...] | None  # the agents the app allowed (None: all)
    slo_ms: float | None = None
    calibration: tuple[Mapping[str, np.ndarray], np.ndarray] | None = None
    exit_policy: str = "max_prob"


@dataclass(frozen=True)
class Placement:
    """One deployment of a model on agents: its id, plan and the stage specs sent."""

    deployment_id: str
    plan: Any
    specs: tuple[StageSpec, ...]
    bytes_sent: int  # shard bytes this placement transferred (0: all cached)


def place(cluster: Agents, source: DeploySource, devices: Sequence[str] | None,
          plan: Any = None, progress: AnyProgress | None = None) -> Placement:
    """Plan (unless `plan` is given), extract, upload what the agents' caches lack, load."""
    from partitioner.extract import extract_shards

    model = source.model
    if not model.is_file():
        raise ConfigError(f"no model file at {model}")
    started = time.perf_counter()
    graph = None
    whole = model.suffix.lower() in WHOLE_FILE_SUFFIXES
    if whole:
        plan = whole_file_plan(cluster, model, devices)
    elif plan is None:
        plan, graph = make_plan(cluster, model, source.strategy, source.exits, source.objective,
                                source.batch_size, devices, source.slo_ms, source.calibration,
                                source.exit_policy)
    rules = exit_rules(plan, source.exits, source.exit_policy)
    deployment_id = uuid.uuid4().hex[:12]
    with tempfile.TemporaryDirectory(prefix="edge-runtime-shards-") as tmp:
        if whole:
            shard_dir = model.parent
        else:
            plan = extract_shards(plan, model, tmp, graph=graph, save_plan=False)
            shard_dir = Path(tmp)
        sent = 0
        for stage in plan.stages:
            cluster.link(stage.device)  # fails early on a plan for other devices
            assert stage.shard_file is not None and stage.shard_sha256 is not None
            sent += upload(cluster, stage.device, shard_dir / stage.shard_file,
                           stage.shard_sha256, progress)
    specs = stage_specs(cluster, plan, rules, deployment_id)
    loaded: list[tuple[str, str]] = []
    try:
        for spec, stage in reversed(list(zip(specs, plan.stages, strict=True))):
            request = Deploy(spec.deployment_id, ONNX_STAGE, spec, cluster.hub.session,
                             cluster.timeouts.lease_s)
            # listed before the call: a deploy that timed out here may still finish there
            loaded.append((stage.device, spec.deployment_id))
            cluster.call(stage.device, request, DeployReply, timeout_s=cluster.timeouts.deploy_s)
    except BaseException:
        unload_stages(cluster, loaded)
        raise
    log.info("deployed %s as %s over %s in %.2f s (%d bytes sent)", model.name, deployment_id,
             [s.device for s in plan.stages], time.perf_counter() - started, sent)
    return Placement(deployment_id, plan, tuple(specs), sent)


def unload_stages(cluster: Agents, stages: Sequence[tuple[str, str]],
                  timeout_s: float | None = None) -> list[str]:
    """Unload each (agent, stage id), best effort (an agent may be the one that failed);
    returns the problems met, in words."""
    problems: list[str] = []
    for agent, stage_id in stages:
        try:
            cluster.call(agent, Unload(stage_id), UnloadReply, timeout_s=timeout_s)
        except Exception as error:  # keep unloading the others
            log.debug("unload of %s on %s failed: %s", stage_id, agent, error)
            problems.append(str(error))
    return problems


def stage_specs(cluster: Agents, plan: Any, rules: dict[str, ExitRule],
                deployment_id: str) -> list[StageSpec]:
    stages = list(plan.stages)
    keys = tuple(i.public_key for i in cluster.agents if i.public_key)
    signature = tuple(TensorSpec(s.name, s.dtype, tuple(s.shape)) for s in plan.model_inputs)
    specs: list[StageSpec] = []
    for index, stage in enumerate(stages):
        nxt = stages[index + 1] if index + 1 < len(stages) else None
        hop = None
        if nxt is not None:
            info = cluster.info(nxt.device)
            hop = Hop(info.name, info.address, info.public_key, f"{deployment_id}.{index + 1}")
        specs.append(StageSpec(
            deployment_id=f"{deployment_id}.{index}", stage=index, n_stages=len(stages),
            shard_sha256=str(stage.shard_sha256), shard_ext=Path(str(stage.shard_file)).suffix,
            inputs=tuple(stage.inputs), forward=tuple(stage.forward),
            outputs=tuple(stage.outputs),
            exit=rules.get(stage.exit) if stage.exit else None, next_hop=hop,
            memory_bytes=int(stage.memory_bytes) or None,
            signature=signature if index == 0 else (), allow_keys=keys,
        ))
    return specs


def replace_thresholds(plan: Any, thresholds: Mapping[str, float | None]) -> Any:
    """`plan` with the given exit thresholds (helper for apps and tests)."""
    exits = tuple(dataclasses.replace(e, threshold=thresholds.get(e.name, e.threshold))
                  for e in plan.exits)
    return dataclasses.replace(plan, exits=exits)
