"""Failover with real agent processes and real signals: nothing lost, nothing twice.

- SIGKILL one of three agents in the middle of 500 streamed pipeline requests: every
  request is answered exactly once, in input order, equal to plain onnxruntime.
- SIGSTOP an agent past its heartbeat timeout: it is detected, the deployment fails
  over to the others; after SIGCONT the agent answers a hello again, rejoins, and the
  next request after its backoff is re-planned onto it (between requests).
- An agent that keeps getting lost is banned for `ban_s` (flapping).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import numpy as np
import pytest

import edge_runtime as er
from edge_runtime.protocol import Run
from edge_runtime.sdk.health import AgentState
from support.onnx_models import mlp_chain, run_model
from transports.linkemu import LinkEmulator, LinkSpec

# Heartbeats every 0.2 s, 1 s of silence = lost; a lost agent is knocked on after
# 0.2–0.6 s, doubling; three losses within a minute ban it for 30 s.
FAST = er.Timeouts(request_s=10.0, heartbeat_interval_s=0.2, heartbeat_timeout_s=1.0,
                   hello_s=3.0, rejoin_backoff_s=0.3, rejoin_backoff_max_s=1.0,
                   flap_window_s=60.0, flap_limit=3, ban_s=30.0)
WIDTH = 64


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mlp_chain(tmp_path_factory.mktemp("failover") / "mlp.onnx", layers=9, width=WIDTH)


def feeds(i: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(i).standard_normal((1, WIDTH)).astype(np.float32)}


def index_of(cluster: er.LocalCluster, name: str) -> int:
    return next(p.index for p in cluster.processes if p.name == name)


def test_sigkill_mid_stream_of_500_answers_each_once_in_order(model: Path) -> None:
    n = 500
    want = [run_model(model, feeds(i))["y"] for i in range(n)]
    with er.local_cluster(3, timeouts=FAST) as cluster:
        deployment = cluster.deploy(model, strategy="pipeline")
        assert len(deployment.agents) >= 2
        victim = deployment.agents[len(deployment.agents) // 2]
        cluster.link(victim).alive = None  # found on the wire, as for a remote agent
        keys = [f"req-{i}" for i in range(n)]
        results = deployment.run_many((feeds(i) for i in range(n)), max_in_flight=8,
                                      keys=keys)
        got = []
        for i, result in enumerate(results):
            if i == n // 2:
                cluster.processes[index_of(cluster, victim)].kill()
            got.append(result)
        assert [r.key for r in got] == keys  # each exactly once, in input order
        for i, result in enumerate(got):
            np.testing.assert_allclose(result["y"], want[i], rtol=1e-5, atol=1e-5)
        assert deployment.failovers == 1
        assert victim not in deployment.agents
        assert {r.served_by for r in got} == {"cluster"}
        assert max(r.attempts for r in got) == 2  # those in flight were sent again
        assert sum(r.attempts == 2 for r in got) <= 8


def test_sigstop_past_the_timeout_fails_over_then_the_agent_rejoins(model: Path) -> None:
    with er.local_cluster(2, timeouts=FAST) as cluster:
        deployment = cluster.deploy(model, strategy="pipeline")
        assert len(deployment.agents) == 2
        victim = deployment.agents[0]
        proc = cluster.processes[index_of(cluster, victim)]
        assert proc.process is not None
        proc.process.send_signal(signal.SIGSTOP)
        try:
            start = time.monotonic()
            result = deployment.run(feeds(1))
            elapsed = time.monotonic() - start
        finally:
            proc.process.send_signal(signal.SIGCONT)
        np.testing.assert_allclose(result["y"], run_model(model, feeds(1))["y"], rtol=1e-5,
                                   atol=1e-5)
        assert elapsed < FAST.heartbeat_timeout_s + 5.0
        assert deployment.agents == tuple(a for a in deployment.agents if a != victim)
        assert not cluster.health.usable(victim)
        assert cluster.status()[victim]["health"].startswith("lost")
        # after its backoff, the next request knocks, finds it back and re-plans onto it
        deadline = time.monotonic() + 15.0
        while victim not in deployment.agents and time.monotonic() < deadline:
            time.sleep(0.3)
            deployment.run(feeds(2))
        assert victim in deployment.agents and cluster.health.usable(victim)
        assert deployment.placement_bytes_sent == 0  # the same cuts: every shard was cached
        out = deployment.run(feeds(3))
        np.testing.assert_allclose(out["y"], run_model(model, feeds(3))["y"], rtol=1e-5,
                                   atol=1e-5)


def test_an_agent_lost_again_and_again_is_banned(model: Path) -> None:
    with er.local_cluster(2, timeouts=FAST) as cluster:
        deployment = cluster.deploy(model, strategy="pipeline")
        victim = deployment.agents[-1]
        proc = cluster.processes[index_of(cluster, victim)]
        assert proc.process is not None
        for round_ in range(FAST.flap_limit):
            deadline = time.monotonic() + 15.0
            while victim not in deployment.agents and time.monotonic() < deadline:
                time.sleep(0.3)
                deployment.run(feeds(round_))  # between requests: it rejoins
            assert victim in deployment.agents
            proc.process.send_signal(signal.SIGSTOP)
            try:
                deployment.run(feeds(round_))  # answered by the other agent
            finally:
                proc.process.send_signal(signal.SIGCONT)
        record = cluster.health.record(victim)
        assert record.state is AgentState.BANNED
        assert record.retry_at - time.monotonic() > FAST.ban_s - 5.0
        for i in range(3):  # it answers again, but stays out for the ban
            time.sleep(0.3)
            deployment.run(feeds(i))
        assert victim not in deployment.agents




def test_a_request_id_sent_twice_is_computed_and_answered_once(model: Path) -> None:
    with er.local_cluster(2, timeouts=FAST) as cluster:
        deployment = cluster.deploy(model, strategy="pipeline")
        hub = cluster.hub
        first = cluster.link(deployment.agents[0])
        request_id = hub.next_id()
        run = Run(deployment_id=deployment.specs[0].deployment_id, sent_at=time.time())
        for _ in range(2):
            hub.send(first, run.frame(request_id, tensors=feeds(7)), timeout_s=3.0)
        links = [cluster.link(name) for name in deployment.agents]
        frame = hub.wait({request_id}, 5.0, links, "result")
        np.testing.assert_allclose(frame.tensors["y"], run_model(model, feeds(7))["y"],
                                   rtol=1e-5, atol=1e-5)
        with pytest.raises(er.errors.AgentUnavailableError, match="busy"):
            hub.wait({request_id}, 1.5, links, "second result")  # none comes
        stage = deployment.status()[deployment.specs[0].deployment_id]
        assert stage["duplicates_dropped"] == 1 and stage["served"] == 1


def test_a_flaky_emulated_link_fails_over_rejoins_and_bans_with_nothing_lost(
        model: Path) -> None:
    """The coordinator's link to one agent is a slow Wi-Fi (3 ms ± 2 ms) that drops out
    three times for 2 s (`transports.LinkEmulator`): each drop is a loss and a failover
    onto the other agent, each return a rejoin; the third loss within the window bans
    it. Every request is answered, by the cluster, correctly."""
    emulator = LinkEmulator()
    created = time.monotonic()
    with er.local_cluster(2, timeouts=FAST, link_emulation=emulator) as cluster:
        deployment = cluster.deploy(model, strategy="pipeline")
        victim = deployment.agents[0]  # the first stage: it only answers heartbeats to us
        cluster.link(victim).alive = None  # only the wire tells
        at = time.monotonic() - created + 1.0
        windows = tuple((at + 5.0 * k, at + 5.0 * k + 2.0) for k in range(3))
        emulator.links = {victim: LinkSpec(delay_s=0.003, jitter_s=0.002,
                                           disconnect_windows=windows)}
        end = time.monotonic() + windows[-1][1] - (time.monotonic() - created) + 1.0
        answered = 0
        while time.monotonic() < end:
            result = deployment.run(feeds(answered))
            np.testing.assert_allclose(result["y"], run_model(model, feeds(answered))["y"],
                                       rtol=1e-5, atol=1e-5)
            assert result.served_by == "cluster"
            answered += 1
            time.sleep(0.05)
        assert emulator.dropped > 0
        assert cluster.health.record(victim).state is AgentState.BANNED
        assert len(cluster.health.record(victim).losses) == FAST.flap_limit
        assert deployment.failovers >= FAST.flap_limit
        assert victim not in deployment.agents


def test_a_deadline_ends_the_wait_for_a_paused_cluster_and_the_journal_says_so(
        model: Path, tmp_path: Path) -> None:
    policy = er.FallbackPolicy(when_away="queue")  # would wait up to queue_s = 60 s
    with er.local_cluster(1, timeouts=FAST, fallback=policy,
                          journal=tmp_path / "requests.db") as cluster:
        deployment = cluster.deploy(model, strategy="single")
        proc = cluster.processes[0]
        assert proc.process is not None
        proc.process.send_signal(signal.SIGSTOP)
        try:
            start = time.monotonic()
            with pytest.raises(er.errors.DeadlineError, match="deadline"):
                deployment.run(feeds(0), key="late-1", deadline_s=3.0)
            assert 2.5 < time.monotonic() - start < 5.0
        finally:
            proc.process.send_signal(signal.SIGCONT)
        assert cluster.journal is not None
        entry = cluster.journal.get("late-1")
        assert entry is not None and entry.state == "failed" and "deadline" in str(entry.error)
        assert cluster.resume().results == {}  # a final answer: not run again
