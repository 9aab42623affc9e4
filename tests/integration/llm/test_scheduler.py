"""`GenerationScheduler`: many threads submit, one thread owns the deployment.

Real agents (a local cluster of two), the tiny llama checkpoint: concurrent greedy
generations from several threads each equal their own single `generate`; a cancelled
handle stops before its next token and the next request is served correctly; a full
queue refuses at once; bad requests fail in the caller's thread before queuing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import edge_runtime as er
from edge_runtime.errors import ConfigError, GenerationError, QueueFullError
from edge_runtime.llm.engine import Generation
from edge_runtime.sdk.scheduler import GenerationScheduler

PROMPTS = [[1, 5, 17, 33], [2, 9, 40], [7, 7, 7, 120, 3], [11, 60]]
NEW = 12


@pytest.fixture(scope="module")
def deployed(checkpoint: Callable[[str], Path]) -> Iterator[tuple[er.LlmDeployment,
                                                                   list[Generation]]]:
    with er.local_cluster(2) as cluster:
        llm = cluster.deploy_llm(checkpoint("llama"), max_context=64)
        alone = [llm.generate(p, NEW, stop=[]) for p in PROMPTS]  # before the thread owns it
        assert all(isinstance(g, Generation) for g in alone)
        yield llm, alone  # type: ignore[misc]


def test_concurrent_submissions_each_equal_their_own_generation(
        deployed: tuple[er.LlmDeployment, list[Generation]]) -> None:
    llm, alone = deployed
    scheduler = GenerationScheduler(llm).start()
    try:
        got: dict[int, list[int]] = {}

        def client(i: int) -> None:
            handle = scheduler.submit(PROMPTS[i], NEW, stop=[])
            got[i] = [e.token_id for e in handle.events(timeout_s=30)]
            assert handle.finish_reason == "length"

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(PROMPTS))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert got == {i: list(g.token_ids) for i, g in enumerate(alone)}
        many = scheduler.generate_many(PROMPTS, NEW, stop=[])
        assert [g.token_ids for g in many] == [g.token_ids for g in alone]
    finally:
        scheduler.close()


def test_cancel_stops_a_generation_and_the_next_is_served(
        deployed: tuple[er.LlmDeployment, list[Generation]]) -> None:
    llm, alone = deployed
    scheduler = GenerationScheduler(llm).start()
    try:
        handle = scheduler.submit(PROMPTS[0], 40, stop=[])
        first = handle.next_event(timeout_s=30)
        assert first is not None
        handle.cancel()
        rest = list(handle.events(timeout_s=30))
        assert len(rest) <= 1 and handle.finish_reason == "cancelled"
        after = scheduler.submit(PROMPTS[1], NEW, stop=[]).result(timeout_s=30)
        assert after.token_ids == alone[1].token_ids
    finally:
        scheduler.close()


def test_bad_requests_fail_in_the_callers_thread_and_a_full_queue_refuses(
        deployed: tuple[er.LlmDeployment, list[Generation]]) -> None:
    llm, _ = deployed
    scheduler = GenerationScheduler(llm, max_queue=1)  # not started: nothing drains it
    with pytest.raises(GenerationError, match="context"):
        scheduler.submit(PROMPTS[0], 1000)
    with pytest.raises(GenerationError, match="vocabulary"):
        scheduler.submit([10**6], 4)
    waiting = scheduler.submit(PROMPTS[0], 4)
    with pytest.raises(QueueFullError):
        scheduler.submit(PROMPTS[1], 4)
    scheduler.close(cancel=True)
    assert waiting.cancelled and list(waiting.events(timeout_s=1)) == []
    assert waiting.finish_reason == "cancelled"
    with pytest.raises(ConfigError, match="shutting down"):
        scheduler.submit(PROMPTS[1], 4)


# --- continuous batching: several sequences per step on the agents ---


@pytest.fixture(scope="module")
def batched(checkpoint: Callable[[str], Path]) -> Iterator[tuple[er.LlmDeployment,
                                                                  list[Generation]]]:
    with er.local_cluster(2) as cluster:
        llm = cluster.deploy_llm(checkpoint("llama"), max_context=64, max_batch=4)
        alone = [llm.generate(p, NEW, stop=[]) for p in PROMPTS]
        assert all(isinstance(g, Generation) for g in alone)
        yield llm, alone  # type: ignore[misc]


def test_batched_generations_each_equal_their_own_and_share_steps(
        batched: tuple[er.LlmDeployment, list[Generation]]) -> None:
    llm, alone = batched
    steps_before = sum(s["steps"] for s in llm.status().values())
    scheduler = GenerationScheduler(llm).start()
    try:
        handles = [scheduler.submit(p, NEW, stop=[]) for p in PROMPTS]
        got = [[e.token_id for e in h.events(timeout_s=30)] for h in handles]
        assert got == [list(g.token_ids) for g in alone]
        assert all(h.finish_reason == "length" for h in handles)
    finally:
        scheduler.close()
    status = llm.status()
    steps = sum(s["steps"] for s in status.values()) - steps_before
    # no memory budget: every agent runs packed kernels and counts their copy on top of
    # what the coordinator planned for its share
    planned = dict(zip(llm.agents, (s.peak_memory_bytes for s in llm.plan.shares),
                       strict=True))
    assert all(st["packed_kernels"] and st["memory_bytes"] > planned[name]
               for name, st in status.items())
    # alone: NEW steps per generation on each of 2 agents; batched they share most steps
    assert steps < 2 * NEW * len(PROMPTS) / 2
    # more prompts than the queue holds: generate_many waits for room
    small = GenerationScheduler(llm, max_queue=1).start()
    try:
        many = small.generate_many(PROMPTS * 2, NEW, stop=[])
    finally:
        small.close()
    assert [g.token_ids for g in many] == [g.token_ids for g in alone] * 2


def test_a_request_joins_a_running_batch_and_a_cancel_frees_its_slot(
        batched: tuple[er.LlmDeployment, list[Generation]]) -> None:
    llm, alone = batched
    scheduler = GenerationScheduler(llm).start()
    try:
        long = scheduler.submit(PROMPTS[0], 40, stop=[])
        assert long.next_event(timeout_s=30) is not None
        doomed = scheduler.submit(PROMPTS[2], 40, stop=[])
        assert doomed.next_event(timeout_s=30) is not None
        doomed.cancel()
        late = [scheduler.submit(p, NEW, stop=[]) for p in PROMPTS[1:]]  # joins mid-way
        assert [g.token_ids for g in (h.result(timeout_s=30) for h in late)] == [
            g.token_ids for g in alone[1:]]
        assert list(long.events(timeout_s=30))  # still streaming, unaffected
        assert long.finish_reason == "length" and doomed.finish_reason == "cancelled"
    finally:
        scheduler.close()


def test_an_agent_killed_mid_batch_every_stream_goes_on_unchanged(
        checkpoint: Callable[[str], Path]) -> None:
    timeouts = er.Timeouts(request_s=10.0, heartbeat_interval_s=0.25, heartbeat_timeout_s=1.0)
    with er.local_cluster(3, timeouts=timeouts) as trio:
        llm = trio.deploy_llm(checkpoint("llama"), max_context=64, max_batch=4,
                              collective_timeout_s=1.0)
        want = [llm.generate(p, 20, stop=[]).token_ids for p in PROMPTS]  # type: ignore[union-attr]
        victim = next(n for i, n in enumerate(llm.agents) if i != llm.plan.hub)
        index = next(p.index for p in trio.processes if p.name == victim)
        scheduler = GenerationScheduler(llm).start()
        try:
            handles = [scheduler.submit(p, 20, stop=[]) for p in PROMPTS]
            firsts = [h.next_event(timeout_s=30) for h in handles]
            trio.processes[index].kill()
            got = [[f.token_id] + [e.token_id for e in h.events(timeout_s=30)]
                   for f, h in zip(firsts, handles, strict=True) if f is not None]
        finally:
            scheduler.close()
        assert got == [list(w) for w in want]
        assert llm.failovers == 1 and victim not in llm.agents


def test_every_agent_killed_mid_batch_the_fallback_finishes_each_stream(
        checkpoint: Callable[[str], Path]) -> None:
    """With "local" in the chain (the same checkpoint on this device), a batch whose
    cluster goes away mid-stream is finished here: each stream's ids equal the
    uninterrupted run, and the tokens say who produced them."""
    timeouts = er.Timeouts(request_s=10.0, heartbeat_interval_s=0.25, heartbeat_timeout_s=1.0)
    with er.local_cluster(2, timeouts=timeouts, fallback=["cluster", "local"]) as pair:
        llm = pair.deploy_llm(checkpoint("llama"), max_context=64, max_batch=4,
                              collective_timeout_s=1.0)
        want = [llm.generate(p, 16, stop=[]).token_ids for p in PROMPTS]  # type: ignore[union-attr]
        scheduler = GenerationScheduler(llm).start()
        try:
            handles = [scheduler.submit(p, 16, stop=[]) for p in PROMPTS]
            firsts = [h.next_event(timeout_s=30) for h in handles]
            for proc in pair.processes:
                proc.kill()
            events = [[f, *h.events(timeout_s=60)] for f, h in zip(firsts, handles, strict=True)]
        finally:
            scheduler.close()
        assert [[e.token_id for e in ev if e] for ev in events] == [list(w) for w in want]
        assert all(ev[0] and ev[0].served_by == "cluster" for ev in events)
        assert all(ev[-1] and ev[-1].served_by.startswith("local:") for ev in events)
        assert [h.finish_reason for h in handles] == ["length"] * len(PROMPTS)
