"""`Health`: backoff with jitter, bans for flapping, one outage counted once (no process)."""

from __future__ import annotations

import random

from edge_runtime.sdk.config import Timeouts
from edge_runtime.sdk.health import AgentState, Health

T = Timeouts(rejoin_backoff_s=1.0, rejoin_backoff_max_s=8.0, flap_window_s=100.0,
             flap_limit=3, ban_s=60.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make() -> tuple[Health, Clock]:
    clock = Clock()
    return Health(T, ["a", "b"], clock=clock, rng=random.Random(0)), clock


def test_a_lost_agent_is_knocked_on_after_a_jittered_backoff_that_doubles() -> None:
    health, clock = make()
    record = health.lost("a", "killed")
    assert not health.usable("a") and health.usable("b")
    assert 0.5 <= record.retry_at - clock.now < 1.5  # base 1 s times [0.5, 1.5)
    assert health.due() == []
    waits = []
    for _ in range(5):  # knocks that fail: 2, 4, 8, 8, 8 s (capped), jittered
        clock.now = record.retry_at
        assert health.due() == ["a"]
        record = health.lost("a", "still silent")
        waits.append(record.retry_at - clock.now)
    for wait, base in zip(waits, [2, 4, 8, 8, 8], strict=True):
        assert 0.5 * base <= wait < 1.5 * base
    assert record.state is AgentState.DOWN  # one long outage is not flapping
    health.back("a")
    assert health.usable("a") and health.due() == []


def test_one_outage_seen_by_many_requests_counts_once() -> None:
    health, _clock = make()
    first = health.lost("a", "x").retry_at
    for _ in range(10):
        assert health.lost("a", "x").retry_at == first
    assert len(health.record("a").losses) == 1


def test_flapping_within_the_window_bans_and_an_old_loss_is_forgotten() -> None:
    health, clock = make()
    for _ in range(2):
        health.lost("a", "dropped")
        clock.now += 10
        health.back("a")
    record = health.lost("a", "dropped again")
    assert record.state is AgentState.BANNED
    assert record.retry_at - clock.now >= T.ban_s
    assert "banned" in health.summary()["a"]
    clock.now += 200  # past the window: the old losses no longer count
    health.back("a")
    assert health.lost("a", "once more").state is AgentState.DOWN
