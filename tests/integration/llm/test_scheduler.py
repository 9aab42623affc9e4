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
