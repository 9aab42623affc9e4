"""Batched generations are journaled: delivered, cancelled and cut-off ones each end
in the right state, and the cut-off ones are finished by `Cluster.resume()`.

Real agents (a local cluster of two), a journal file, the tiny llama checkpoint, a
scheduler batching four sequences per step.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import edge_runtime as er
from edge_runtime.errors import ClusterUnavailableError
from edge_runtime.llm.engine import Generation
from edge_runtime.sdk.scheduler import GenerationScheduler

PROMPTS = [[1, 5, 17, 33], [2, 9, 40], [7, 7, 7, 120, 3], [11, 60]]
NEW = 16
FAST = er.Timeouts(request_s=10.0, heartbeat_interval_s=0.25, heartbeat_timeout_s=1.0,
                   rejoin_backoff_s=0.2, rejoin_backoff_max_s=1.0)


def test_batched_generations_are_journaled_and_a_cancel_is_not_resumed(
        checkpoint: Callable[[str], Path], tmp_path: Path) -> None:
    journal = tmp_path / "requests.db"
    with er.local_cluster(2, journal=journal, fallback=["cluster"]) as pair:
        llm = pair.deploy_llm(checkpoint("llama"), max_context=64, max_batch=4)
        scheduler = GenerationScheduler(llm).start()
        try:
            handles = [scheduler.submit(p, NEW, stop=[], key=f"gen-{i}")
                       for i, p in enumerate(PROMPTS)]
            assert handles[3].next_event(timeout_s=30) is not None
            handles[3].cancel()
            done = [h.result(timeout_s=30) for h in handles[:3]]
            list(handles[3].events(timeout_s=30))
        finally:
            scheduler.close()
        assert pair.journal is not None
        counts = pair.journal.counts()
        assert counts["delivered"] == 3 and counts["failed"] == 1, counts
        assert pair.journal.unfinished() == []
        cancelled = pair.journal.get("gen-3")
        assert cancelled is not None and "cancelled" in (cancelled.error or "")
        assert all(g.token_ids for g in done)


def test_batched_generations_cut_off_by_the_cluster_are_resumed_unchanged(
        checkpoint: Callable[[str], Path], tmp_path: Path) -> None:
    """Both agents killed mid-batch with no fallback in the chain: every stream fails
    with `ClusterUnavailableError` and its entry stays unfinished; with the agents back,
    `Cluster.resume()` finishes each, equal to its uninterrupted run."""
    journal = tmp_path / "requests.db"
    with er.local_cluster(2, journal=journal, fallback=["cluster"], timeouts=FAST) as pair:
        llm = pair.deploy_llm(checkpoint("llama"), max_context=64, max_batch=4,
                              collective_timeout_s=1.0)
        want = [llm.generate(p, NEW, stop=[]) for p in PROMPTS]
        assert pair.journal is not None
        before = pair.journal.counts()["delivered"]
        scheduler = GenerationScheduler(llm).start()
        try:
            handles = [scheduler.submit(p, NEW, stop=[], key=f"cut-{i}")
                       for i, p in enumerate(PROMPTS)]
            assert all(h.next_event(timeout_s=30) is not None for h in handles)
            for proc in pair.processes:
                proc.kill()
            errors = []
            for handle in handles:
                try:
                    handle.result(timeout_s=60)
                except ClusterUnavailableError as error:
                    errors.append(error)
        finally:
            scheduler.close()
        assert len(errors) == len(PROMPTS)
        assert sorted(e.key for e in pair.journal.unfinished()) == [
            f"cut-{i}" for i in range(len(PROMPTS))]
        for index in range(len(pair.processes)):
            pair.restart(index)  # and rejoined: the deployment places itself again
        resumed = pair.resume(timeout_s=60)
        assert resumed.skipped == {}
        got = {k: g for k, g in resumed.results.items() if isinstance(g, Generation)}
        assert {k: g.token_ids for k, g in got.items()} == {
            f"cut-{i}": w.token_ids for i, w in enumerate(want)  # type: ignore[union-attr]
        }
        counts = pair.journal.counts()
        assert counts["delivered"] == before + len(PROMPTS) and not pair.journal.unfinished()
