"""Faults with real processes: an agent SIGKILLed mid-stream, emulated devices.

With failover off (`FallbackPolicy(failover=False)`) a lost agent fails the requests
in flight at once, naming it; `test_failover.py` has the same faults with failover on.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import numpy as np
import pytest

import edge_runtime as er
from edge_runtime.errors import AgentUnavailableError
from edge_runtime.sdk.config import Timeouts
from support.cluster import DIGITS_MODEL, assert_outputs_equal, digits_inputs, reference

# Heartbeats every 0.25 s, silence for 1 s = dead; a request may take 10 s.
FAST = Timeouts(request_s=10.0, heartbeat_interval_s=0.25, heartbeat_timeout_s=1.0)
NO_FAILOVER = er.FallbackPolicy(failover=False)


def _stream(n: int) -> Iterator[dict[str, np.ndarray]]:
    images = digits_inputs(64)["image"]
    for i in range(n):
        yield {"image": images[i % 64][None]}


def test_sigkill_mid_run_many_fails_fast_and_names_the_agent() -> None:
    with er.local_cluster(3, timeouts=FAST, fallback=NO_FAILOVER) as cluster:
        model = cluster.deploy(DIGITS_MODEL, strategy="pipeline")
        assert len(model.agents) >= 2
        victim = model.agents[-1]
        index = next(p.index for p in cluster.processes if p.name == victim)
        results = model.run_many(_stream(10_000), max_in_flight=4)
        next(results)
        cluster.processes[index].kill()
        start = time.monotonic()
        with pytest.raises(AgentUnavailableError) as caught:
            for _ in results:
                pass
        elapsed = time.monotonic() - start
        assert caught.value.agent == victim
        assert elapsed < FAST.request_s
        # the other agents stay healthy and serve the next deployment
        survivors = [a.name for a in cluster.agents if a.name != victim]
        again = cluster.deploy(DIGITS_MODEL, strategy="pipeline", devices=survivors)
        feeds = digits_inputs(2)
        assert_outputs_equal(again.run(feeds).outputs, reference(DIGITS_MODEL, feeds))
        status = cluster.status()
        assert status[victim]["available"] is False
        assert all(status[name]["available"] for name in survivors)


def test_silent_remote_agent_is_detected_by_heartbeat() -> None:
    """Without the local-process check, a killed agent is found by missed heartbeats."""
    with er.local_cluster(2, timeouts=FAST, fallback=NO_FAILOVER) as cluster:
        model = cluster.deploy(DIGITS_MODEL, strategy="pipeline")
        victim = model.agents[0]
        cluster.link(victim).alive = None  # behave like connect(): no process handle
        index = next(p.index for p in cluster.processes if p.name == victim)
        cluster.processes[index].kill()
        start = time.monotonic()
        with pytest.raises(AgentUnavailableError) as caught:
            model.run(digits_inputs(1))
        assert caught.value.agent == victim
        assert time.monotonic() - start < FAST.heartbeat_timeout_s + 2.0


def test_emulated_presets_are_labelled_and_dilated() -> None:
    with er.local_cluster(2, presets=["raspberry-pi-4", None]) as cluster:
        pi, host = cluster.agents
        assert pi.emulated and pi.profile.emulated_preset == "raspberry-pi-4"
        assert "emulated" in pi.label
        assert not host.emulated
        assert pi.profile.gflops_fp32 < host.profile.gflops_fp32
        status = cluster.status()
        assert status[pi.name]["emulated"] and not status[host.name]["emulated"]
        single_pi = cluster.deploy(DIGITS_MODEL, strategy="single", devices=[pi.name])
        single_host = cluster.deploy(DIGITS_MODEL, strategy="single", devices=[host.name])
        feeds = digits_inputs(4)
        slow, fast = [], []
        for _ in range(9):  # interleaved, so load from other processes hits both alike
            slow.append(single_pi.run(feeds))
            fast.append(single_host.run(feeds))
        assert all(t.emulated for r in slow for t in r.stages)
        assert not any(t.emulated for r in fast for t in r.stages)
        slow_compute = float(np.median([r.compute_s for r in slow]))
        fast_compute = float(np.median([r.compute_s for r in fast]))
        assert slow_compute > 1.5 * fast_compute  # the preset dilates by ~2.3x
        assert_outputs_equal(slow[0].outputs, reference(DIGITS_MODEL, feeds))


def test_run_many_overlaps_stages_across_agents() -> None:
    """Stage k works on request i+1 while stage k+1 works on request i."""
    with er.local_cluster(2, presets=["raspberry-pi-4", "raspberry-pi-4"]) as cluster:
        model = cluster.deploy(DIGITS_MODEL, strategy="pipeline")
        assert len(model.agents) == 2
        results = list(model.run_many(_stream(20), max_in_flight=4))
        overlaps = 0
        for earlier, later in itertools.pairwise(results):
            last = earlier.stages[-1]
            if later.stages[0].started_at < last.started_at + last.compute_s:
                overlaps += 1  # request i+1 began before request i finished its last stage
        assert overlaps >= 5, overlaps
