"""Counters kept at the source: histogram buckets, bounded peer labels, serve stats."""

from __future__ import annotations

import pytest

from edge_runtime.metrics.counters import MAX_PEERS, Histogram, WireCounters, label
from edge_runtime.metrics.serve_stats import RATE_WINDOW_S, ServeStats


def test_histogram_is_cumulative_with_inf_last() -> None:
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3.0, 4.0):
        histogram.observe(value)
    snap = histogram.snapshot()
    assert snap.cumulative == (2, 3, 5)  # <=0.1 (0.1 falls in its own bucket), <=1, +Inf
    assert snap.count == 5
    assert snap.total == pytest.approx(7.65)


def test_wire_counters_by_kind_error_and_peer() -> None:
    wire = WireCounters()
    wire.request("status", 0.002)
    wire.request("status", 0.004)
    wire.request("llm_step")  # answered later by its deployment: counted, not timed
    wire.error("deploy", "MemoryBudgetError")
    wire.sent(b"coordinator-1", 100)
    wire.sent(b"coordinator-1", 50)
    wire.received("agent-b", 7)
    assert wire.requests() == {"status": 2, "llm_step": 1}
    assert set(wire.latency()) == {"status"}
    assert wire.latency()["status"].count == 2
    assert wire.errors() == {("deploy", "MemoryBudgetError"): 1}
    assert wire.bytes_sent() == {"coordinator-1": 150}
    assert wire.bytes_received() == {"agent-b": 7}


def test_peers_beyond_the_limit_are_summed_as_other() -> None:
    wire = WireCounters()
    for i in range(MAX_PEERS + 5):
        wire.sent(f"peer-{i}".encode(), 1)
    table = wire.bytes_sent()
    assert len(table) == MAX_PEERS + 1
    assert table["other"] == 5
    wire.sent(b"peer-0", 1)  # a peer already counted keeps its own series
    assert wire.bytes_sent()["peer-0"] == 2


def test_label_is_printable_and_bounded() -> None:
    assert label(b"\x00abc\xff") == "?abc\ufffd"
    assert len(label("x" * 500)) == 80


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_serve_stats_rates_and_last_timeline() -> None:
    clock = Clock()
    stats = ServeStats(clock)
    stats.started("h1", "chatcmpl-1", "chat", 5)
    for i, seconds in enumerate((0.30, 0.35, 0.40)):
        clock.now += 0.1
        stats.token("h1", seconds)
        assert stats.tokens_total == i + 1
    assert stats.last() is None  # not finished yet
    stats.ended("h1", "length")
    last = stats.last()
    assert last is not None
    assert last.id == "chatcmpl-1" and last.prompt_tokens == 5 and last.finish == "length"
    assert last.token_s == (0.30, 0.35, 0.40)
    assert last.first_token_s == 0.30
    assert last.total_s == pytest.approx(0.3)
    tokens_per_s, requests_per_s = stats.rates()
    assert tokens_per_s == pytest.approx(3 / RATE_WINDOW_S)
    assert requests_per_s == pytest.approx(1 / RATE_WINDOW_S)
    ttft, duration = stats.histograms()
    assert ttft.count == 1 and ttft.total == pytest.approx(0.30)
    assert duration.count == 1
    clock.now += RATE_WINDOW_S + 1  # old events leave the window
    assert stats.rates() == (0.0, 0.0)
    assert stats.finished == {"length": 1}


def test_serve_stats_counts_errors_and_failed_requests() -> None:
    stats = ServeStats(Clock())
    stats.started("h", "cmpl-1", "completions", 3)
    stats.ended("h", None, "ClusterUnavailableError")
    stats.ended("h", "stop")  # ended twice (close after cancel): counted once
    stats.error("QueueFullError", 429)
    assert stats.finished == {"error": 1}
    assert stats.errors == {("QueueFullError", 429): 1}
    last = stats.last()
    assert last is not None and last.error == "ClusterUnavailableError" and last.token_s == ()


def test_made_up_kinds_cannot_grow_the_series_without_bound() -> None:
    from edge_runtime.metrics.counters import MAX_KINDS

    wire = WireCounters()
    for i in range(MAX_KINDS + 10):
        wire.request(f"kind-{i}", 0.001)
        wire.error(f"kind-{i}", "InputError")
    assert len(wire.requests()) == MAX_KINDS + 1 and wire.requests()["other"] == 10
    assert len(wire.latency()) <= MAX_KINDS + 1
    assert wire.errors()[("other", "other")] == 10
