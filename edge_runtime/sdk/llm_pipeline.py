"""An LLM deployed as pipeline stages: the runner over the stages, and the strategy choice.

Why a runner of its own: a tensor-parallel step goes to every agent and the hub
answers; a pipelined step goes to the first stage's agents only, flows stage to stage
(agent to agent, `agent/llm_stage.py`), and the last stage's hub answers. The runner
cuts each step into micro-batches (`llm.pipeline_batches`) and sends them back to back
before waiting, so every stage is busy with a different micro-batch: the layout's
count for decode steps (the planner's choice: 1 where a stage reads its weights once
whatever it carries), one per stage for a step that feeds a prompt (its chunks follow
each other through the stages, a pipelined prefill).

Failover: the runner is an `AgentRunner`, so losing an agent places the checkpoint
again over the agents still up (`LlmFailover`, with the deployment's strategy through
`place_strategy`: a pipeline again, "auto" chosen anew) and replays every sequence as
a prefill that rebuilds each stage's KV cache; `install` takes the new placement, a
pipelined one stepped stage to stage, any other as a tensor deployment.

`place_strategy` is what `deploy_llm(strategy=...)` calls for every strategy but a
plain "tensor": it plans (`llm_pipeline_place.plan_layout`) and places a one-stage
layout (single, tensor) as a tensor plan, whose notes keep every strategy's prediction
and the reason, and a layout of several stages as an "llm-stage" deployment.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from edge_runtime.errors import AgentError, AgentUnavailableError, ConfigError, DeadlineError
from edge_runtime.llm.engine import BatchItem
from edge_runtime.llm.pipeline_batches import assemble, micro_batches
from edge_runtime.llm.sampling import Draw, sample
from edge_runtime.protocol import LlmStep, LlmStepReply
from edge_runtime.sdk.agents import Agents, parse_reply
from edge_runtime.sdk.errors_map import error_from_frame
from edge_runtime.sdk.llm_files import Progress
from edge_runtime.sdk.llm_pipeline_place import (
    PipelinePlacement,
    link_table,
    place_pipeline,
    plan_layout,
    q4_stages,
)
from edge_runtime.sdk.llm_place import LlmPlacement, LlmSource, place_llm
from edge_runtime.sdk.llm_runner import AgentRunner
from partitioner.llm_layout import STRATEGIES, LlmLayout
from partitioner.llm_pipeline import quantize_layout

#: What `deploy_llm(strategy=...)` accepts.
LLM_STRATEGIES = ("auto", *STRATEGIES)


class PipelineRunner(AgentRunner):
    """`Runner` over a pipelined placement (any other placement: `AgentRunner`'s step)."""

    def install(self, placement: LlmPlacement) -> None:
        super().install(placement)
        self._first = ([self._cluster.link(n) for n in placement.stage_names[0]]
                       if isinstance(placement, PipelinePlacement) else [])

    def runs_on_agents(self) -> bool:
        """A pipeline's stages answer logits (sampled here), so it decodes step by step."""
        return super().runs_on_agents() and not isinstance(self.placement, PipelinePlacement)

    def _sampled_step(self, items: Sequence[BatchItem], draws: Sequence[Draw]) -> list[int]:
        """The last stage answers logits, not tokens: each sequence's token is drawn here,
        with its `Draw`, from a step of logits (a replay's or a decode step's alike)."""
        if not isinstance(self.placement, PipelinePlacement):
            return super()._sampled_step(items, draws)
        logits = self._step(items, True)
        return [sample(row, d.params, d.rng) for row, d in zip(logits, draws, strict=True)]

    def _step(self, items: Sequence[BatchItem], last_only: bool) -> np.ndarray:
        placement = self.placement
        if not isinstance(placement, PipelinePlacement):
            return super()._step(items, last_only)
        layout = placement.layout
        feeding = any(len(item.token_ids) > 1 for item in items)
        batches = micro_batches(items, len(layout.stages) if feeding else layout.micro_batches)
        hub, timeouts = self._cluster.hub, self._cluster.timeouts
        started = time.perf_counter()
        timeout = timeouts.request_s if self._timeout_s is None else self._timeout_s
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise DeadlineError("the generation passed its deadline")
            timeout = min(timeout, left)
        ends = time.monotonic() + timeout
        pending: dict[int, int] = {}
        outs: list[np.ndarray | None] = [None] * len(batches)
        compute = comm = 0.0
        try:
            for index, pieces in enumerate(batches):
                request_id = hub.next_id()
                ids = np.ascontiguousarray(np.concatenate(
                    [np.asarray(p.batch.token_ids, dtype=np.int64) for p in pieces]))
                step = LlmStep(placement.deployment_id, tuple(p.batch.slot for p in pieces),
                               tuple(p.batch.start for p in pieces),
                               tuple(len(p.batch.token_ids) for p in pieces), bool(last_only))
                pending[request_id] = index
                for link in self._first:
                    hub.send(link, step.frame(request_id, tensors={"ids": ids}),
                             timeout_s=timeouts.hello_s)
            while pending:
                frame = hub.wait(set(pending), max(0.0, ends - time.monotonic()), self._links,
                                 "logits")
                index = pending.pop(frame.request_id)
                if frame.is_error:
                    raise error_from_frame(frame, frame.sender or placement.answering_agent)
                reply = parse_reply(LlmStepReply, frame.meta, frame.sender, LlmStep.KIND)
                logits = frame.tensors.get("logits")
                if logits is None:
                    raise AgentError("answered a step without logits", agent=frame.sender)
                outs[index] = np.array(logits)
                compute += reply.compute_s
                comm += reply.comm_s
        except AgentUnavailableError:
            hub.forget(pending)
            if self.deadline is not None and time.monotonic() >= self.deadline:
                raise DeadlineError("the generation passed its deadline") from None
            raise
        except BaseException:
            hub.forget(pending)
            raise
        self.last_step = {"wall_s": time.perf_counter() - started, "compute_s": compute,
                          "comm_s": comm, "micro_batches": float(len(batches))}
        return assemble(len(items), batches, [o for o in outs if o is not None], last_only)


def place_strategy(cluster: Agents, source: LlmSource, names: Sequence[str], strategy: str,
                   *, objective: str | None = None, progress: Progress | None = None,
                   layout: LlmLayout | None = None) -> tuple[LlmPlacement, LlmLayout]:
    """Plan `strategy` over `names` (or take a ready `layout` whose devices are agent
    names) and place it; the placement and the layout. `source.quantize="q4"`: the
    layout's split (planned on fp32 weights, uncapped by the budgets, as a 4-bit tensor
    plan is) with every stage's shares 4-bit, or int8 streaming where a budget cannot
    load them (`llm_q4`), and the memory and predicted times of those."""
    if strategy not in LLM_STRATEGIES:
        raise ConfigError(f"LLM strategy {strategy!r} is not one of {list(LLM_STRATEGIES)}")
    if layout is not None:
        if layout.shape.layers != source.config.layers or layout.shape.hidden != \
                source.config.hidden:
            raise ConfigError("the layout was made for another model; plan again")
        unknown = [n for n in layout.devices if n not in names]
        if unknown:
            raise ConfigError(f"the layout names {unknown}, not agents of this deployment")
    else:  # 4-bit: every layout judged with its stages' shares 4-bit (`plan_layout`)
        layout = plan_layout(cluster, source, names, strategy, objective=objective)
    if source.quantize is not None:
        # a ready layout's stages 4-bit on each stage's own shape (its layers' weights and
        # KV cache, the LM head on the last; a planned one is already); InfeasiblePlanError
        # before any agent loads for a budget that can neither load nor stream its share
        layout = quantize_layout(layout, [cluster.info(n).profile for n in names], q4_stages,
                                 memory_budgets=[source.budgets.get(n) for n in names],
                                 links=link_table(cluster, names))
    if len(layout.stages) == 1:
        placement = place_llm(cluster, source, list(layout.devices), plan=layout.tensor_plan(),
                              progress=progress)
        return placement, layout
    return place_pipeline(cluster, source, layout, progress), layout


def describe_stages(placement: PipelinePlacement) -> str:
    """Each stage's agents, layers and shares, for `LlmDeployment.describe`."""
    layout = placement.layout
    stages = "; ".join(
        f"stage {s.index} layers {s.layers[0]}..{s.layers[1] - 1} on "
        + ", ".join(f"{sh.device} ({sh.n_kv_heads} kv heads, {sh.weight_bytes / 1e6:.1f} MB"
                    f"{', streaming' if sh.streaming else ''})" for sh in s.plan.shares)
        for s in layout.stages)
    return (f"{layout.strategy} over {len(placement.names)} agent(s) in "
            f"{len(layout.stages)} stages, {layout.micro_batches} micro-batch(es) per "
            f"decode step: {stages}; chosen because {layout.reason}")


__all__ = ["LLM_STRATEGIES", "PipelineRunner", "describe_stages", "place_strategy"]
