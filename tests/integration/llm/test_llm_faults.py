"""Agent restarts and deaths around an LLM deployment (real processes, real signals).

- A share is converted once per (checkpoint, share): a redeploy after an agent
  restart reuses the converted slices in the agent's cache (files untouched).
- An agent SIGKILLed after the 10th token of a streamed greedy generation over three
  agents: the loss is found on the wire, the checkpoint is placed again over the two
  survivors, the sequence so far is replayed, and the stream goes on — the full output
  equals the uninterrupted run, with no duplicate and no gap.
- With failover off, the same kill fails the call, naming the agent.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import edge_runtime as er
from edge_runtime.errors import AgentUnavailableError, DeadlineError
from edge_runtime.llm.engine import Generation
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


def _kill_mid_stream(trio: er.LocalCluster, llm: er.LlmDeployment, after: int,
                     new_tokens: int) -> tuple[str, list[int]]:
    victim = next(n for i, n in enumerate(llm.agents) if i != llm.plan.hub)
    index = next(p.index for p in trio.processes if p.name == victim)
    # behave like connect(): no process handle, so the loss must be found on the wire
    # (missed heartbeats or the hub's collective timeout), not by polling the child
    trio.link(victim).alive = None
    stream = llm.generate(PROMPT, new_tokens, stream=True)
    assert not isinstance(stream, Generation)
    ids = [next(stream).token_id for _ in range(after)]
    trio.processes[index].kill()
    ids += [event.token_id for event in stream]
    return victim, ids


def test_agent_killed_after_ten_tokens_the_stream_goes_on_unchanged(
    checkpoint: Callable[[str], Path]
) -> None:
    with er.local_cluster(3, timeouts=FAST) as trio:
        llm = trio.deploy_llm(checkpoint("llama"), max_context=96,
                              collective_timeout_s=COLLECTIVE_S)
        # the agents decode ahead of the reader (a run on the agents): the kill after the
        # 10th token read must still find most of the 64 to come
        expected = llm.generate(PROMPT, 64, stop=[]).token_ids
        assert len(expected) == 64
        victim, ids = _kill_mid_stream(trio, llm, 10, 64)
        assert ids == list(expected)  # no duplicate, no gap, the same greedy tokens
        assert llm.failovers == 1 and llm.runner.replays == 1
        assert victim not in llm.agents and len(llm.agents) == 2
        assert not trio.health.usable(victim)
        assert llm.generate(PROMPT, 64, stop=[]).token_ids == expected  # and it keeps serving


def test_a_fused_4bit_share_killed_mid_stream_fails_over_and_keeps_serving(
    checkpoint: Callable[[str], Path]
) -> None:
    """4-bit shares run fused layer segments (`q4_segments`); after the kill the survivors
    hold other 4-bit shares (the codes are rounded per share), so the tokens after the
    failover may differ from the uninterrupted run's: the stream has no gap and no
    duplicate, the tokens read before the kill are the run's own, and it keeps serving."""
    with er.local_cluster(3, timeouts=FAST) as trio:
        llm = trio.deploy_llm(checkpoint("llama"), max_context=96, quantize="q4",
                              collective_timeout_s=COLLECTIVE_S)
        # the shares with heads run fused attention (a share with no heads and 75 MLP
        # columns, not whole 4-bit blocks, keeps one kernel per matrix)
        fused = {name: st["fused_segments"] for name, st in llm.status().items()}
        assert fused == {name: st["share"]["kv_heads"][0] < st["share"]["kv_heads"][1]
                         for name, st in llm.status().items()} and any(fused.values())
        expected = llm.generate(PROMPT, 64, stop=[]).token_ids
        victim, ids = _kill_mid_stream(trio, llm, 10, 64)
        assert len(ids) == 64 and ids[:10] == list(expected[:10])
        assert llm.failovers == 1 and victim not in llm.agents and len(llm.agents) == 2
        again = llm.generate(PROMPT, 64, stop=[]).token_ids
        assert again == llm.generate(PROMPT, 64, stop=[]).token_ids  # deterministic


def test_without_failover_a_kill_mid_generation_is_named(
    checkpoint: Callable[[str], Path]
) -> None:
    with er.local_cluster(3, timeouts=FAST, fallback=er.FallbackPolicy(failover=False)) as trio:
        llm = trio.deploy_llm(checkpoint("llama"), max_context=64,
                              collective_timeout_s=COLLECTIVE_S)
        start = time.monotonic()
        with pytest.raises(AgentUnavailableError) as caught:
            _kill_mid_stream(trio, llm, 1, 20)
        assert time.monotonic() - start < FAST.heartbeat_timeout_s + COLLECTIVE_S + 3.0
        assert caught.value.agent in llm.agents


def test_queued_generation_waits_for_paused_agents_and_goes_on_unchanged(
    checkpoint: Callable[[str], Path]
) -> None:
    """Both agents paused mid-stream, under the "queue" policy: the generation waits
    (no fallback in the chain), and when they are resumed it continues on the cluster
    from the prompt plus the tokens so far — the same greedy tokens, no gap."""
    timeouts = Timeouts(request_s=10.0, heartbeat_interval_s=0.25, heartbeat_timeout_s=1.0,
                        rejoin_backoff_s=0.2, rejoin_backoff_max_s=1.0, queue_s=30.0)
    policy = er.FallbackPolicy(when_away="queue")
    with er.local_cluster(2, timeouts=timeouts, fallback=policy) as pair:
        llm = pair.deploy_llm(checkpoint("llama"), max_context=64,
                              collective_timeout_s=COLLECTIVE_S)
        expected = llm.generate(PROMPT, 16, stop=[]).token_ids
        stream = llm.generate(PROMPT, 16, stop=[], stream=True)
        assert not isinstance(stream, Generation)
        events = [next(stream) for _ in range(3)]
        for proc in pair.processes:
            assert proc.process is not None
            proc.process.send_signal(signal.SIGSTOP)
        resume = threading.Timer(4.0, lambda: [p.process.send_signal(signal.SIGCONT)
                                               for p in pair.processes if p.process])
        resume.start()
        try:
            start = time.monotonic()
            events += list(stream)
            waited = time.monotonic() - start
        finally:
            resume.cancel()
            for proc in pair.processes:
                if proc.process is not None:
                    proc.process.send_signal(signal.SIGCONT)
        assert [e.token_id for e in events] == list(expected)
        assert [e.index for e in events] == list(range(16))
        assert {e.served_by for e in events} == {"cluster"}
        assert waited > 3.0


def test_a_generation_past_its_deadline_fails_with_deadline_error(
    checkpoint: Callable[[str], Path]
) -> None:
    policy = er.FallbackPolicy(when_away="queue")
    with er.local_cluster(1, timeouts=FAST, fallback=policy) as one:
        llm = one.deploy_llm(checkpoint("llama"), max_context=64)
        proc = one.processes[0]
        assert proc.process is not None
        proc.process.send_signal(signal.SIGSTOP)
        try:
            start = time.monotonic()
            with pytest.raises(DeadlineError):
                llm.generate(PROMPT, 8, deadline_s=2.0)
            assert 1.5 < time.monotonic() - start < 4.0
        finally:
            proc.process.send_signal(signal.SIGCONT)
