"""Pipelined and hybrid LLM deployments over REAL agent processes: losing an agent, and
the progress of their deploy.

- A stage's agent SIGKILLed mid-stream (greedy): the loss is found on the wire, the
  checkpoint is planned again with the deployment's own strategy over the survivors —
  a pipeline stays a pipeline, a hybrid that three agents no longer make becomes a
  pipeline of the two left — every sequence is replayed (each new stage rebuilds the
  KV cache of its layers), and the stream equals the uninterrupted run.
- A pipelined (or hybrid) deploy tells each stage agent's conversion of its layers as
  progress events, polled while it runs and ended at its total, after that agent's
  files — as a tensor-parallel deploy does (tests/integration/llm/test_deploy_progress.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import edge_runtime as er
from edge_runtime.agent.llm_load import CONVERT_TASK
from edge_runtime.llm.checkpoint import Checkpoint
from edge_runtime.llm.engine import Generation, LlmEngine
from edge_runtime.sdk.config import Timeouts
from edge_runtime.sdk.llm_failover import LlmFailover
from edge_runtime.sdk.llm_files import SEND_TASK
from edge_runtime.sdk.llm_pipeline import PipelineRunner, place_strategy
from edge_runtime.sdk.llm_pipeline_place import PipelinePlacement
from edge_runtime.sdk.llm_place import LlmSource, unload_llm
from edge_runtime.sdk.progress import ProgressEvent

TINYLM = Path(__file__).parents[3] / "examples" / "tinylm" / "checkpoint"  # 4 layers
# Heartbeats every 0.25 s, 1 s of silence = dead (as tests/integration/llm/test_llm_faults.py)
FAST = Timeouts(request_s=10.0, heartbeat_interval_s=0.25, heartbeat_timeout_s=1.0)
PROMPT = [256, 72, 101, 108, 108, 111]
NEW_TOKENS = 16


@pytest.fixture
def trio() -> Iterator[er.LocalCluster]:
    """Three agents of their own: every test here kills one."""
    with er.local_cluster(3, timeouts=FAST, log_level="WARNING") as local:
        yield local


def _pipeline_of(llm: er.LlmDeployment) -> PipelinePlacement:
    placement = llm.runner.placement
    assert isinstance(llm.runner, PipelineRunner)
    assert isinstance(placement, PipelinePlacement), type(placement)
    return placement


def _kill_mid_stream(trio: er.LocalCluster, llm: er.LlmDeployment, victim: str,
                     after: int) -> list[int]:
    """Stream a greedy generation, SIGKILL `victim` after `after` tokens, finish it."""
    trio.link(victim).alive = None  # found on the wire, as with connect()
    stream = llm.generate(PROMPT, NEW_TOKENS, stream=True, stop=[])
    assert not isinstance(stream, Generation)
    ids = [next(stream).token_id for _ in range(after)]
    trio.processes[[p.name for p in trio.processes].index(victim)].kill()
    return ids + [event.token_id for event in stream]


def test_a_pipeline_that_loses_a_stage_is_placed_again_as_a_pipeline(
        trio: er.LocalCluster) -> None:
    llm = trio.deploy_llm(TINYLM, strategy="pipeline", max_context=64)
    before = _pipeline_of(llm)
    assert len(before.layout.stages) >= 2
    expected = llm.generate(PROMPT, NEW_TOKENS, stop=[]).token_ids
    assert len(expected) == NEW_TOKENS
    victim = before.layout.stages[1].devices[0]
    ids = _kill_mid_stream(trio, llm, victim, 5)
    assert ids == list(expected)  # no duplicate, no gap, the same greedy tokens
    assert llm.failovers == 1 and llm.runner.replays == 1
    after = _pipeline_of(llm)
    assert after.layout.strategy == "pipeline" and len(after.layout.stages) == 2
    assert victim not in llm.agents and len(llm.agents) == 2
    status = llm.status()
    assert all(st["type"] == "llm-stage" for st in status.values())
    assert sorted(tuple(st["layers"]) for st in status.values())[0][0] == 0
    assert llm.generate(PROMPT, NEW_TOKENS, stop=[]).token_ids == expected  # and it serves on
    llm.unload()


def test_a_restarted_stage_agent_is_taken_back_into_a_pipeline(trio: er.LocalCluster) -> None:
    """Killed, failed over, restarted: the next generation places the pipeline over the
    three again (`take_back`), and its first step already goes through — the hops to the
    restarted agent start a fresh handshake, not a socket left from before the kill."""
    llm = trio.deploy_llm(TINYLM, strategy="pipeline", max_context=64)
    expected = llm.generate(PROMPT, NEW_TOKENS, stop=[]).token_ids
    victim = _pipeline_of(llm).layout.stages[1].devices[0]
    index = [p.name for p in trio.processes].index(victim)
    trio.link(victim).alive = None
    trio.processes[index].kill()
    assert llm.generate(PROMPT, NEW_TOKENS, stop=[]).token_ids == expected
    assert llm.failovers == 1 and victim not in llm.agents
    trio.restart(index)
    placed = llm.id
    assert llm.generate(PROMPT, NEW_TOKENS, stop=[]).token_ids == expected
    assert llm.id != placed and _pipeline_of(llm).layout.strategy == "pipeline"
    assert llm.failovers == 1  # taken back: no second failover
    llm.unload()


def test_a_hybrid_that_loses_an_agent_becomes_a_pipeline_of_the_two_left(
        trio: er.LocalCluster) -> None:
    llm = trio.deploy_llm(TINYLM, strategy="hybrid", max_context=64)
    before = _pipeline_of(llm)
    assert before.layout.strategy == "hybrid" and len(before.layout.devices) == 3
    expected = llm.generate(PROMPT, NEW_TOKENS, stop=[]).token_ids
    pair = next(stage for stage in before.layout.stages if len(stage.devices) == 2)
    victim = pair.devices[1 - pair.plan.hub]  # a member of the tensor pair, not its hub
    ids = _kill_mid_stream(trio, llm, victim, 4)
    assert ids == list(expected)
    assert llm.failovers == 1
    after = _pipeline_of(llm)  # a hybrid needs three agents: the two left, pipelined
    assert after.layout.strategy == "pipeline" and len(after.layout.stages) == 2
    assert victim not in llm.agents and len(llm.agents) == 2
    llm.unload()


def test_auto_is_chosen_again_over_the_survivors(trio: er.LocalCluster) -> None:
    """`LlmFailover` given strategy "auto" (what `deploy_llm(strategy="auto")` asked)
    plans with every strategy over the two agents left and takes the best."""
    ckpt = Checkpoint(TINYLM)
    names = [a.name for a in trio.agents]
    source = LlmSource(checkpoint=TINYLM, config=ckpt.config, digest=ckpt.digest,
                       budgets=dict.fromkeys(names), max_context=64, quantize=None,
                       max_batch=1, send_checkpoint=False, threads=None,
                       collective_timeout_s=None, devices=None)
    placement, layout = place_strategy(trio, source, names, "auto")
    runner = PipelineRunner(trio, placement, source.max_context)
    failover = LlmFailover(trio, source, runner, strategy="auto")
    runner.recover = failover.recover
    engine = LlmEngine(runner, ckpt.config)
    expected = engine.generate(PROMPT, NEW_TOKENS, stop=[]).token_ids
    victim = layout.devices[-1]
    trio.link(victim).alive = None  # found on the wire, as with connect()
    stream = engine.stream(PROMPT, NEW_TOKENS, stop=[])
    ids = [next(stream).token_id for _ in range(4)]
    trio.processes[names.index(victim)].kill()
    ids += [event.token_id for event in stream]
    assert ids == list(expected)
    assert failover.failovers == 1 and failover.layout is not None
    survivors = {n for n in names if n != victim}
    chosen = failover.layout
    assert set(chosen.devices) <= survivors and victim not in runner.placement.names
    assert chosen.reason.startswith("best latency: " + chosen.strategy)  # chosen, not asked
    planned_over = {d for p in chosen.predictions for group in p.groups for d in group}
    assert planned_over == survivors  # every strategy was predicted over the two left
    assert isinstance(runner.placement, PipelinePlacement) == (len(chosen.stages) > 1)
    unload_llm(trio, runner.placement.deployment_id, runner.placement.names)


@pytest.mark.parametrize("strategy", ["pipeline", "hybrid"])
def test_a_pipelined_deploy_reports_each_stage_agents_conversion(strategy: str,
                                                                 tmp_path: Path) -> None:
    events: list[ProgressEvent] = []
    caches = [tmp_path / f"cache{i}" for i in range(3)]
    with er.local_cluster(3, log_level="WARNING", cache_dirs=caches) as cluster:
        llm = cluster.deploy_llm(TINYLM, strategy=strategy, max_context=64,
                                 progress=events.append)
        layout = _pipeline_of(llm).layout
        assert layout.strategy == strategy
        assert llm.generate(PROMPT, 2, stop=[]).token_ids
        llm.unload()
    converting = [e for e in events if e.task == CONVERT_TASK]
    assert {e.agent for e in converting} == set(layout.devices)
    for stage, agent in ((st, a) for st in layout.stages for a in st.devices):
        mine = [e for e in converting if e.agent == agent]
        assert all(e.unit == "blocks" for e in mine)
        assert [e.done for e in mine] == sorted(e.done for e in mine)  # never back
        assert mine[-1].finished and sum(e.finished for e in mine) == 1  # ends once, at total
        # its own layers only: two blocks each, plus the LM head's and the embedding's
        # (counted on every stage, written where used: `llm.slices.convert_share`)
        start, end = stage.layers
        assert mine[-1].done == 2 * (end - start) + 2 < 2 * 4 + 2
        sent = [i for i, e in enumerate(events) if e.task == SEND_TASK and e.agent == agent]
        assert sent and sent[-1] < events.index(mine[-1])  # its files first, then conversion
