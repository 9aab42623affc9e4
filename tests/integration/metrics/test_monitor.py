"""`ClusterMonitor` against a real agent process that stops answering and comes back."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from edge_runtime.metrics import ClusterMonitor
from support.cli_agent import cli_agent
from transports.keys import trust


def test_a_paused_agent_is_shown_unreachable_then_back(tmp_path: Path) -> None:
    with cli_agent(tmp_path, "--name", "paused") as (process, info):
        trust(info["client_keys"], info["public_key"], "agent", address=info["address"])
        with ClusterMonitor.connect([info["address"]], info["client_keys"],
                                    timeout_s=0.5) as monitor:
            (agent,) = monitor.snapshot().agents
            assert agent.available and agent.name == "paused" and agent.health == "up"
            assert agent.rtt_s is not None and "cores" in agent.profile
            os.kill(process.pid, signal.SIGSTOP)
            try:
                (stopped,) = monitor.snapshot(max_age_s=0).agents
                assert not stopped.available
                assert stopped.error is not None and "no answer within 0.5 s" in stopped.error
                assert stopped.health == "unreachable"
                assert stopped.last_seen_s is not None and stopped.last_seen_s >= 0.5
                cached = monitor.snapshot(max_age_s=60).agents[0]
                assert cached is stopped  # a recent look is reused, not repeated
            finally:
                os.kill(process.pid, signal.SIGCONT)
            deadline = time.monotonic() + 10
            while not (back := monitor.snapshot(max_age_s=0).agents[0]).available:
                assert time.monotonic() < deadline, back.error
            assert back.requests_served > agent.requests_served
