"""`Cluster.deploy_llm`: check the arguments, read the checkpoint, place it, and hand
back the `LlmDeployment` (`llm.py`).

Why apart from the deployment: everything here happens once, before any agent loads
anything — argument checks, the checkpoint's config and digest, per-agent budgets, the
strategy's placement (`llm_place.py` for tensor-parallel, `llm_pipeline.py` for the
others) — while `llm.py` is what the app holds afterwards (generate, failover,
fallback, journal). A failover places again through `llm_failover.py`, not here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from edge_runtime.errors import ConfigError
from edge_runtime.protocol.data import MAX_BATCH
from edge_runtime.sdk.agents import Agents
from edge_runtime.sdk.fallback.policy import FallbackPolicy, Targets
from edge_runtime.sdk.journal import Journal
from edge_runtime.sdk.llm import LlmDeployment
from edge_runtime.sdk.llm_files import Progress
from edge_runtime.sdk.llm_pipeline import LLM_STRATEGIES, place_strategy
from edge_runtime.sdk.llm_place import LlmSource, check_names, place_llm
from edge_runtime.sdk.llm_plan import Budget, budgets_for, check_quantize
from transports.syncformat import SYNC_FORMATS

if TYPE_CHECKING:
    from partitioner.llm_layout import LlmLayout
    from partitioner.tensor import TensorPlan

# Context the KV caches are preallocated for unless `max_context` is given: enough for
# a prompt and a reply on the small models edge devices serve, 2 MB of KV per layer
# for a 1 B-parameter model.
DEFAULT_MAX_CONTEXT = 512


def deploy_llm(cluster: Agents, path: str | Path, strategy: str = "tensor", *,
               memory_budget: Budget | Sequence[Budget] = None,
               max_context: int = DEFAULT_MAX_CONTEXT, devices: Sequence[str] | None = None,
               timeout_s: float | None = None,
               collective_timeout_s: float | None = None,
               plan: TensorPlan | None = None, send_checkpoint: bool = False,
               progress: Progress | None = None, threads: int | None = None,
               quantize: str | None = None, max_batch: int = 1,
               objective: str | None = None, layout: LlmLayout | None = None,
               policy: FallbackPolicy | None = None,
               targets: Targets | None = None, journal: Journal | None = None,
               sync: str = "fp32",
               ) -> LlmDeployment:
    """Split the checkpoint at `path` over the cluster's agents.

    `strategy`: "tensor" (every agent a slice of every layer), "pipeline" (each agent a
    range of layers, activations agent to agent), "hybrid" (tensor groups inside
    pipeline stages), "single" (the best one agent), or "auto": the planner predicts
    each strategy's ms/token (one stream) and tokens/s (many streams) from the agents'
    profiles, measured links and budgets, and takes the best for `objective`
    ("latency", or "throughput"; default "throughput" when `max_batch` > 1). The choice,
    every prediction and the reason are in `.layout` (and in `describe()`). `layout`:
    deploy a ready `partitioner.llm_layout.LlmLayout` whose devices are agent names.

    `memory_budget`: bytes or "512MB" for every agent, or one per agent (None = the
    agent's own budget, unlimited if it has none); a share above its budget streams
    through a sliding window. `devices`: agent names to use (default: all up).
    `timeout_s`: per forward step (default the cluster's `request_s`).
    `collective_timeout_s`: how long agents wait for each other inside a step.
    `plan`: deploy a ready `TensorPlan` whose share devices are agent names (skips
    planning; e.g. a plan made for other speeds than the agents report; a failover
    plans anew).
    `send_checkpoint`: send the checkpoint's files even to agents that could read
    `path` (an agent that cannot read it is always sent the files its cache lacks);
    `progress`: a callback of `sdk.progress.ProgressEvent`s (bytes done, rate, time
    left), or the older `progress(agent, bytes_sent, total)`; called at most ten times
    a second and at the end.
    `threads`: BLAS threads per agent; default: all of its cores, or its share of them
    when several of the agents run on one host (a local cluster).
    `quantize`: None (fp32) or "q4": every matrix as a 4-bit onnxruntime kernel
    (`MatMulNBits`, int8 activations; ~6x fewer bytes per token) where the budget
    holds the share resident (with onnxruntime's packed copy and the load peak);
    below that the share streams int8 blocks through the layer window
    (`MatMulInteger`; the plan's notes say which blocks stay and the MB read per
    token). The plan's bytes, predicted time and memory are the quantized ones.
    `max_batch`: sequences decoded together in one step (a `GenerationScheduler` batches
    concurrent generations up to it); every agent keeps a KV cache slot per sequence, so
    the plan's memory counts max_batch × max_context tokens of cache.
    `policy`, `targets`, `journal`: the cluster's fallback chain and request journal.
    `sync`: the format the tensor group's allreduces carry activations in: "fp32"
    (default: exact sums), or, opt-in and lossy, "bf16", "fp16" (2 bytes a value) or
    "q8" (blocks of 32 int8 with a scale, 0.28 of fp32's bytes); sums are added in fp32
    and every agent gets the same bits. The measured logit error of each is in
    docs/BENCHMARKS.md. strategy="tensor" only.
    Errors before any agent loads anything: `ConfigError` (strategy, devices,
    quantize, a budget that can neither hold a 4-bit share nor stream it),
    `CheckpointError` (unsupported config, missing shards, tensors that do not match
    the config), `InfeasiblePlanError` (a budget below one block plus the KV cache).
    """
    from edge_runtime.llm import Checkpoint, LlmTokenizer
    from edge_runtime.llm.gguf import resolve_checkpoint

    if strategy not in LLM_STRATEGIES:
        raise ConfigError(f"LLM strategy {strategy!r} is not supported; use one of "
                          f"{list(LLM_STRATEGIES)}")
    if max_context < 1:
        raise ConfigError(f"max_context must be at least 1, got {max_context}")
    if not 1 <= max_batch <= MAX_BATCH:
        raise ConfigError(f"max_batch must be in [1, {MAX_BATCH}], got {max_batch}")
    check_quantize(quantize)
    if sync not in SYNC_FORMATS:
        raise ConfigError(f"sync={sync!r} is not a sync format; use one of {list(SYNC_FORMATS)}")
    if sync != "fp32" and not ((strategy == "tensor" and layout is None) or plan is not None):
        raise ConfigError(f"sync={sync!r} is for strategy='tensor' only; deploy with "
                          "sync='fp32' or strategy='tensor'")
    if plan is not None and not devices:
        devices = [share.device for share in plan.shares]
    if layout is not None and not devices:
        devices = list(layout.devices)
    names = list(devices) if devices else cluster.usable()
    check_names(cluster, names)
    checkpoint = Path(path).expanduser().resolve()
    checkpoint = resolve_checkpoint(checkpoint)  # a .gguf becomes its converted directory
    ckpt = Checkpoint(checkpoint)
    config, digest = ckpt.config, ckpt.digest
    del ckpt
    tokenizer = LlmTokenizer.from_checkpoint(checkpoint)
    budgets = budgets_for(cluster, names, memory_budget)
    if not isinstance(memory_budget, (list, tuple)):  # one budget (or None) for every agent
        by_name = {a.name: b for a, b in zip(
            cluster.agents, budgets_for(cluster, [a.name for a in cluster.agents],
                                        memory_budget), strict=True)}
    else:
        by_name = dict(zip(names, budgets, strict=True))
    source = LlmSource(checkpoint, config, digest, by_name, max_context, quantize, max_batch,
                       send_checkpoint, threads, collective_timeout_s,
                       tuple(devices) if devices else None, sync=sync)
    # a ready plan or layout is placed as given; after a loss, its own strategy is planned
    asked = strategy if plan is None and layout is None else None
    if (strategy == "tensor" and layout is None) or plan is not None:
        placement = place_llm(cluster, source, names, plan=plan, progress=progress)
    else:
        placement, layout = place_strategy(cluster, source, names, strategy,
                                           objective=objective, progress=progress,
                                           layout=layout)
    return LlmDeployment(cluster, source, placement, tokenizer, timeout_s=timeout_s,
                         policy=policy, targets=targets, journal=journal, strategy=asked,
                         objective=objective, layout=layout)


__all__ = ["DEFAULT_MAX_CONTEXT", "deploy_llm"]
