"""The agent's lease table, on a fake clock: renew, lapse, gone reasons, key counting."""

from __future__ import annotations

import pytest

from edge_runtime.agent.config import AgentTimeouts
from edge_runtime.agent.sessions import MAX_GONE, MAX_SESSIONS, LeaseLimits, Sessions
from edge_runtime.envconfig import with_env_overrides
from edge_runtime.errors import ConfigError
from edge_runtime.sdk.config import Timeouts


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def table(allowed: list[str] | None = None) -> tuple[Sessions, Clock]:
    clock = Clock()
    sink = allowed if allowed is not None else []
    return Sessions(LeaseLimits(default_s=10.0, min_s=1.0, max_s=60.0), "pi", sink.append,
                    clock), clock


def test_a_renewed_session_keeps_its_deployments() -> None:
    sessions, clock = table()
    sessions.touch("s1", 5.0)
    sessions.adopt("s1", "d1")
    for _ in range(10):
        clock.now += 4.0
        assert sessions.renew("s1", ["d1"]) == []
        assert sessions.lapsed() == []
    assert sessions.lease_of("d1") == ("s1", 5.0)


def test_a_silent_session_lapses_and_its_deployments_are_gone_with_a_reason() -> None:
    sessions, clock = table()
    sessions.touch("s1", 5.0)
    sessions.adopt("s1", "d1")
    sessions.adopt("s1", "d2")
    sessions.introduce("s1", ["k1", "k2"])
    clock.now += 5.5
    [lapsed] = sessions.lapsed()
    assert lapsed.deployment_ids == ("d1", "d2")
    assert set(lapsed.keys) == {"k1", "k2"}
    assert lapsed.silent_s == pytest.approx(5.5)
    reason = sessions.gone_reason("d1")
    assert reason is not None and "lease lapsed" in reason and "pi" in reason
    assert sessions.lapsed() == []  # reported once
    # the coordinator comes back: its renewal is told what it lost
    gone = dict(sessions.renew("s1", ["d1", "d3"]))
    assert "lease lapsed" in gone["d1"]
    assert "has no deployment d3" in gone["d3"]


def test_lease_lengths_are_clamped_to_the_agents_limits() -> None:
    sessions, clock = table()
    sessions.touch("short", 0.01)
    sessions.touch("long", 10_000.0)
    sessions.touch("default")
    clock.now += 1.5
    assert [s.session_id for s in sessions.lapsed()] == ["short"]
    clock.now += 10.0
    assert [s.session_id for s in sessions.lapsed()] == ["default"]
    clock.now += 50.0
    assert [s.session_id for s in sessions.lapsed()] == ["long"]


def test_keys_are_allowed_once_per_session() -> None:
    allowed: list[str] = []
    sessions, _ = table(allowed)
    sessions.introduce("s1", ["k1", "k1", ""])
    sessions.introduce("s1", ["k1", "k2"])
    sessions.introduce("s2", ["k1"])
    assert allowed == ["k1", "k2", "k1"]  # s2 vouches for k1 too: counted separately


def test_explicit_unload_leaves_no_gone_reason() -> None:
    sessions, clock = table()
    sessions.adopt("s1", "d1")
    sessions.release("d1")
    clock.now += 11.0
    [lapsed] = sessions.lapsed()
    assert lapsed.deployment_ids == ()
    assert sessions.gone_reason("d1") is None


def test_idle_sessions_are_bounded_and_gone_reasons_too() -> None:
    sessions, clock = table()
    sessions.adopt("owner", "d0")
    for i in range(MAX_SESSIONS + 50):
        sessions.touch(f"idle{i}")
    assert len(sessions) <= MAX_SESSIONS
    lease = sessions.lease_of("d0")
    assert lease is not None and lease[0] == "owner"  # a session that owns something is kept
    for i in range(MAX_GONE + 10):
        sessions.adopt(f"s{i}", f"d{i + 1}")
    clock.now += 11.0
    sessions.lapsed()
    assert sessions.gone_reason(f"d{MAX_GONE + 10}") is not None
    assert sessions.gone_reason("d1") is None  # the oldest reasons were dropped


def test_timeouts_take_environment_overrides() -> None:
    env = {"EDGE_RUNTIME_AGENT_LEASE_DEFAULT_S": "120", "EDGE_RUNTIME_AGENT_PROBE_QUEUE": "3"}
    agent = with_env_overrides(AgentTimeouts(), "EDGE_RUNTIME_AGENT_", env)
    assert agent.lease_default_s == 120.0 and agent.probe_queue == 3
    sdk = with_env_overrides(Timeouts(), "EDGE_RUNTIME_", {"EDGE_RUNTIME_LEASE_S": "7.5"})
    assert sdk.lease_s == 7.5 and sdk.request_s == Timeouts().request_s
    with pytest.raises(ConfigError, match="EDGE_RUNTIME_HELLO_S"):
        with_env_overrides(Timeouts(), "EDGE_RUNTIME_", {"EDGE_RUNTIME_HELLO_S": "soon"})
    with pytest.raises(ConfigError, match="finite"):
        with_env_overrides(Timeouts(), "EDGE_RUNTIME_", {"EDGE_RUNTIME_HELLO_S": "nan"})
