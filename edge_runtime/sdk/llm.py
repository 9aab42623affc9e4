"""`Cluster.deploy_llm`: an LLM split tensor-parallel over agents, driven as an engine `Runner`.

Why a Runner: the generation logic (prefill, decode loop, sampling, stop tokens,
streaming) is `edge_runtime.llm.LlmEngine`'s and is the same for in-process workers
and agents; this module only moves one forward step at a time to the agents. So
sampling happens here, at the coordinator, and `generate(stream=True)` yields each
token as soon as the hub's logits arrive.

Deploy, in order, each step failing with a typed error before the next:
validate the checkpoint here (`Checkpoint`: config, every tensor's name and shape),
plan (`partitioner.plan_tensor_parallel` over the agents' reported profiles, memory
budgets and measured links: the hub is the agent with the lowest summed latency),
with `quantize="q4"` the shares are 4-bit and must fit resident (`llm_plan.py`),
then `deploy` an "llm-shard" to every agent (it converts its share once into its
cache, off its control loop), wait until every agent is loaded (`llm_ready`, which
returns its collective endpoint), and connect the group (`llm_connect`). Any
failure unloads what was loaded.

One step: the same small frame (`llm_step`: start, last_only, int64 token ids) to
every agent over the coordinator's persistent sockets; the hub answers with the
logits. No per-token connection, no JSON.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from edge_runtime.errors import (
    AgentError,
    AgentUnavailableError,
    ConfigError,
    EdgeRuntimeError,
)
from edge_runtime.protocol import (
    COLLECTIVE_TIMEOUT_S,
    Deploy,
    DeployReply,
    LlmConnect,
    LlmConnectReply,
    LlmReady,
    LlmReadyReply,
    LlmStep,
    LlmStepReply,
    Record,
    ShardSpec,
    Unload,
    UnloadReply,
)
from edge_runtime.protocol.kinds import LLM_SHARD
from edge_runtime.sdk.agents import Agents, parse_reply
from edge_runtime.sdk.errors_map import error_from_frame
from edge_runtime.sdk.hub import AgentLink
from edge_runtime.sdk.llm_files import FileSender, Progress, checkpoint_files
from edge_runtime.sdk.llm_plan import (
    Budget,
    blas_threads,
    budgets_for,
    check_plan,
    check_q4_budgets,
    check_quantize,
    host_of,
    plan_llm,
    quantize_plan,
)

if TYPE_CHECKING:
    from edge_runtime.llm import Generation, LlmConfig, LlmEngine, TokenEvent
    from partitioner.tensor import TensorPlan

R = TypeVar("R", bound=Record)

log = logging.getLogger(__name__)

# Context the KV caches are preallocated for unless `max_context` is given: enough for
# a prompt and a reply on the small models edge devices serve, 2 MB of KV per layer
# for a 1 B-parameter model.
DEFAULT_MAX_CONTEXT = 512

class AgentRunner:
    """`Runner` over the agents of one deployment: one `llm_step` frame per forward."""

    def __init__(self, cluster: Agents, deployment_id: str, names: Sequence[str], hub: int,
                 max_context: int, timeout_s: float | None = None) -> None:
        self._cluster = cluster
        self._id = deployment_id
        self._names = tuple(names)
        self._links: list[AgentLink] = [cluster.link(n) for n in names]
        self._hub = hub
        self._max_context = max_context
        self._timeout_s = timeout_s
        self.broken: EdgeRuntimeError | None = None
        self.last_step: dict[str, float] = {}
        self.closed = False

    @property
    def max_context(self) -> int:
        return self._max_context

    def forward(self, token_ids: Sequence[int], start: int, *,
                last_only: bool = True) -> np.ndarray:
        if self.closed:
            raise ConfigError(f"LLM deployment {self._id} was unloaded; deploy it again")
        if self.broken is not None:
            raise AgentUnavailableError(
                f"LLM deployment {self._id} lost an agent earlier ({self.broken}); redeploy "
                "it on the remaining agents", agent=getattr(self.broken, "agent", ""))
        hub = self._cluster.hub
        timeouts = self._cluster.timeouts
        request_id = hub.next_id()
        ids = np.ascontiguousarray(np.asarray(token_ids, dtype=np.int64).reshape(-1))
        step = LlmStep(self._id, int(start), bool(last_only))
        started = time.perf_counter()
        try:
            for link in self._links:
                hub.send(link, step.frame(request_id, tensors={"ids": ids}),
                         timeout_s=timeouts.hello_s)
            timeout = timeouts.request_s if self._timeout_s is None else self._timeout_s
            frame = hub.wait({request_id}, timeout, self._links, "logits")
        except AgentUnavailableError as error:
            hub.forget([request_id])
            self.broken = error
            raise
        if frame.is_error:
            hub.forget([request_id])  # the other members' copies of the same error
            failure = error_from_frame(frame, frame.sender or self._names[self._hub])
            if isinstance(failure, AgentUnavailableError):
                self.broken = failure
            raise failure
        reply = parse_reply(LlmStepReply, frame.meta, frame.sender, step.KIND)
        self.last_step = {"wall_s": time.perf_counter() - started,
                          "compute_s": reply.compute_s, "comm_s": reply.comm_s}
        logits = frame.tensors.get("logits")
        if logits is None:
            raise AgentError("answered a step without logits", agent=frame.sender)
        return np.array(logits)


class LlmDeployment:
    """An LLM deployed tensor-parallel on a cluster: `generate`, `logits`, `status`."""

    def __init__(self, cluster: Agents, deployment_id: str, plan: TensorPlan,
                 names: Sequence[str], engine: LlmEngine, runner: AgentRunner,
                 checkpoint: Path, quantize: str | None = None) -> None:
        self.cluster = cluster
        self.id = deployment_id
        self.plan = plan
        self.agents = tuple(names)
        self.engine = engine
        self.runner = runner
        self.checkpoint = checkpoint
        self.quantize = quantize  # weight format: None (fp32) or "q4"
        self.bytes_sent = 0  # checkpoint bytes this deploy sent (0: agents read it or had it)
        self._unloaded = False

    @property
    def config(self) -> LlmConfig:
        return self.engine.config

    @property
    def max_context(self) -> int:
        return self.runner.max_context

    @property
    def hub_agent(self) -> str:
        return self.agents[self.plan.hub]

    def describe(self) -> str:
        shares = ", ".join(
            f"{name}: {s.n_kv_heads} kv heads, {s.n_columns} mlp cols, "
            f"{s.weight_bytes / 1e6:.1f} MB{' (streaming)' if s.streaming else ''}"
            for name, s in zip(self.agents, self.plan.shares, strict=True))
        weights = "4-bit" if self.quantize == "q4" else "fp32"
        return (f"{self.checkpoint.name} tensor-parallel over {len(self.agents)} agent(s), "
                f"{weights} weights, hub {self.hub_agent}: {shares}")

    def generate(self, prompt: str | Sequence[int], max_new_tokens: int = 32, *,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                 seed: int | None = None, stop: Sequence[int | str] | None = None,
                 stream: bool = False) -> Generation | Iterator[TokenEvent]:
        """Generate up to `max_new_tokens` after `prompt` (text or token ids).

        `stream=False`: the finished `Generation` (text, ids, time to first token,
        s/token). `stream=True`: an iterator of `TokenEvent`s, each yielded as soon
        as it is sampled. `stop`: token ids and/or strings (default: the checkpoint's
        EOS ids). Raises `GenerationError` (prompt too long for `max_context`, bad
        ids) before anything is sent, `AgentUnavailableError` naming an agent that
        died mid-generation.
        """
        kwargs: dict[str, Any] = {"temperature": temperature, "top_k": top_k, "top_p": top_p,
                                  "seed": seed, "stop": stop}
        if stream:
            return self.engine.stream(prompt, max_new_tokens, **kwargs)
        return self.engine.generate(prompt, max_new_tokens, **kwargs)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
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
        _unload(self.cluster, self.id, self.agents)


def _unload(cluster: Agents, deployment_id: str, names: Sequence[str]) -> None:
    problems = []
    for name in names:
        try:
            cluster.call(name, Unload(deployment_id), UnloadReply)
        except Exception as error:  # keep unloading the others; an agent may be gone
            problems.append(str(error))
    if problems:
        log.warning("unload of %s incomplete: %s", deployment_id, "; ".join(problems))


def _ask_all(cluster: Agents, names: Sequence[str], request: Record, reply_type: type[R],
             timeout_s: float) -> list[R]:
    """Send `request` to each agent at once, then collect every reply (typed errors)."""
    hub, kind = cluster.hub, request.KIND
    sent: list[tuple[str, int]] = []
    for name in names:
        request_id = hub.next_id()
        hub.send(cluster.link(name), request.frame(request_id),
                 timeout_s=cluster.timeouts.hello_s)
        sent.append((name, request_id))
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


def deploy_llm(cluster: Agents, path: str | Path, strategy: str = "tensor", *,
               memory_budget: Budget | Sequence[Budget] = None,
               max_context: int = DEFAULT_MAX_CONTEXT, devices: Sequence[str] | None = None,
               timeout_s: float | None = None,
               collective_timeout_s: float | None = None,
               plan: TensorPlan | None = None, send_checkpoint: bool = False,
               progress: Progress | None = None, threads: int | None = None,
               quantize: str | None = None) -> LlmDeployment:
    """Split the checkpoint at `path` tensor-parallel over the cluster's agents.

    `memory_budget`: bytes or "512MB" for every agent, or one per agent (None = the
    agent's own budget, unlimited if it has none); a share above its budget streams
    through a sliding window. `devices`: agent names to use (default: all).
    `timeout_s`: per forward step (default the cluster's `request_s`).
    `collective_timeout_s`: how long agents wait for each other inside a step.
    `plan`: deploy a ready `TensorPlan` whose share devices are agent names (skips
    planning; e.g. a plan made for other speeds than the agents report).
    `send_checkpoint`: send the checkpoint's files even to agents that could read
    `path` (an agent that cannot read it is always sent the files its cache lacks);
    `progress(agent, bytes_sent, total)` is called per chunk.
    `threads`: BLAS threads per agent; default: all of its cores, or its share of them
    when several of the agents run on one host (a local cluster).
    `quantize`: None (fp32) or "q4": every matrix as a 4-bit onnxruntime kernel
    (`MatMulNBits`, int8 activations; ~6x fewer bytes per token), shares resident
    only; the plan's bytes, predicted time and memory are the 4-bit ones.
    Errors before any agent loads anything: `ConfigError` (strategy, devices,
    quantize, a budget that cannot hold a 4-bit share resident),
    `CheckpointError` (unsupported config, missing shards, tensors that do not match
    the config), `InfeasiblePlanError` (a budget below one block plus the KV cache).
    """
    from edge_runtime.llm import Checkpoint, LlmEngine, LlmTokenizer

    if strategy != "tensor":
        raise ConfigError(f"LLM strategy {strategy!r} is not supported; use strategy='tensor'")
    if max_context < 1:
        raise ConfigError(f"max_context must be at least 1, got {max_context}")
    check_quantize(quantize)
    if plan is not None and not devices:
        devices = [share.device for share in plan.shares]
    names = list(devices) if devices else [a.name for a in cluster.agents]
    if not names:
        raise ConfigError("no agents to deploy on")
    if len(set(names)) != len(names):
        raise ConfigError(f"devices lists an agent twice: {names}")
    for name in names:
        cluster.link(name)  # ConfigError naming the known agents
    checkpoint = Path(path).expanduser().resolve()
    ckpt = Checkpoint(checkpoint)
    config, digest = ckpt.config, ckpt.digest
    del ckpt
    tokenizer = LlmTokenizer.from_checkpoint(checkpoint)
    budgets = budgets_for(cluster, names, memory_budget)
    if plan is None:
        plan = plan_llm(cluster, config, digest, names, budgets, max_context, quantize=quantize)
    else:
        check_plan(plan, config, names)
        if quantize == "q4":
            plan = quantize_plan(plan, [cluster.info(n).profile for n in names])
            check_q4_budgets(plan, budgets)
    deployment_id = f"llm-{uuid.uuid4().hex[:10]}"
    keys = tuple(cluster.info(n).public_key for n in names)
    files = checkpoint_files(checkpoint)
    blas = blas_threads(cluster, names) if threads is None else [threads] * len(names)
    sender = FileSender(cluster, checkpoint, progress)
    plan_json = plan.to_json()
    loaded: list[str] = []
    try:
        for rank, name in enumerate(names):
            share = plan.shares[rank]
            spec = ShardSpec(
                checkpoint="" if send_checkpoint else str(checkpoint), checkpoint_digest=digest,
                plan_json=plan_json, rank=rank, names=tuple(names), public_keys=keys,
                max_context=max_context, memory_budget=budgets[rank],
                memory_bytes=share.peak_memory_bytes,
                advertise_host=host_of(cluster.info(name).address),
                collective_timeout_s=collective_timeout_s or COLLECTIVE_TIMEOUT_S,
                files=tuple(files), blas_threads=blas[rank], quantize=quantize)
            request = Deploy(deployment_id, LLM_SHARD, spec, cluster.hub.session,
                             cluster.timeouts.lease_s)
            # listed before the call: a deploy that timed out here may still finish there
            loaded.append(name)
            reply = cluster.call(name, request, DeployReply, timeout_s=cluster.timeouts.deploy_s)
            if reply.missing_files:
                sender.send(name, deployment_id, list(reply.missing_files))
        ready = _ask_all(cluster, names, LlmReady(deployment_id), LlmReadyReply,
                         cluster.timeouts.deploy_s)
        endpoints = tuple(r.address for r in ready)
        _ask_all(cluster, names, LlmConnect(deployment_id, endpoints), LlmConnectReply,
                 cluster.timeouts.hello_s)
    except BaseException:
        _unload(cluster, deployment_id, loaded)
        raise
    log.info("LLM %s deployed as %s over %s (hub %s, %s)", checkpoint.name, deployment_id,
             names, names[plan.hub], quantize or "fp32")
    runner = AgentRunner(cluster, deployment_id, names, plan.hub, max_context, timeout_s)
    engine = LlmEngine(runner, config, tokenizer)
    deployment = LlmDeployment(cluster, deployment_id, plan, names, engine, runner, checkpoint,
                               quantize)
    deployment.bytes_sent = sender.bytes_sent
    return deployment


__all__ = ["DEFAULT_MAX_CONTEXT", "AgentRunner", "LlmDeployment", "deploy_llm", "plan_llm"]

