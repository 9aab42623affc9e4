"""Agent restarts and deaths around an LLM deployment (real processes, real signals).

- A share is converted once per (checkpoint, share): a redeploy after an agent
  restart reuses the converted slices in the agent's cache (files untouched).
- An agent SIGKILLed mid-generation fails the pending call within its timeout with
  `AgentUnavailableError` naming it; the surviving agents serve a new deployment.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import edge_runtime as er
from edge_runtime.errors import AgentUnavailableError
from edge_runtime.sdk.config import Timeouts

# Heartbeats every 0.25 s, 1 s of silence = dead; agents wait 1 s inside a collective.
FAST = Timeouts(request_s=10.0, heartbeat_interval_s=0.25, heartbeat_timeout_s=1.0)
COLLECTIVE_S = 1.0
PROMPT = [1, 5, 17, 33, 99, 150]


@pytest.fixture(scope="module")
def trio() -> Iterator[er.LocalCluster]:
    with er.local_cluster(3, timeouts=FAST) as local:
        yield local


def manifests(cluster: er.LocalCluster) -> dict[Path, float]:
    found = {}
    for proc in cluster.processes:
        for path in (proc.cache_dir / "llm").glob("*/manifest.json"):
            found[path] = path.stat().st_mtime_ns
    return found


def test_share_is_converted_once_and_reused_after_restart(
    trio: er.LocalCluster, checkpoint: Callable[[str], Path]
) -> None:
    names = [a.name for a in trio.agents][:2]
    llm = trio.deploy_llm(checkpoint("llama"), max_context=32, devices=names)
    first = llm.generate(PROMPT, 6).token_ids
    llm.unload()
    converted = manifests(trio)
    assert len(converted) == 2  # one slice directory per share, in each agent's own cache
    trio.restart(1)
    again = trio.deploy_llm(checkpoint("llama"), max_context=32, devices=names)
    try:
        assert again.generate(PROMPT, 6).token_ids == first
        assert manifests(trio) == converted  # nothing was converted again
    finally:
        again.unload()


def test_agent_killed_mid_generation_is_named_and_survivors_serve(
    trio: er.LocalCluster, checkpoint: Callable[[str], Path]
) -> None:
    llm = trio.deploy_llm(checkpoint("llama"), max_context=64,
                          collective_timeout_s=COLLECTIVE_S)
    expected = llm.generate(PROMPT, 20).token_ids
    victim = next(n for i, n in enumerate(llm.agents) if i != llm.plan.hub)
    index = next(p.index for p in trio.processes if p.name == victim)
    # behave like connect(): no process handle, so the loss must be found on the wire
    # (missed heartbeats or the hub's collective timeout), not by polling the child
    trio.link(victim).alive = None
    stream = llm.generate(PROMPT, 20, stream=True)
    next(stream)
    trio.processes[index].kill()
    start = time.monotonic()
    with pytest.raises(AgentUnavailableError) as caught:
        for _ in stream:
            pass
    elapsed = time.monotonic() - start
    assert caught.value.agent == victim
    assert elapsed < FAST.heartbeat_timeout_s + COLLECTIVE_S + 3.0
    with pytest.raises(AgentUnavailableError, match="redeploy"):
        llm.logits(PROMPT)  # the broken deployment says so at once
    survivors = [n for n in llm.agents if n != victim]
    again = trio.deploy_llm(checkpoint("llama"), max_context=64, devices=survivors)
    assert again.generate(PROMPT, 20).token_ids == expected
    again.unload()
