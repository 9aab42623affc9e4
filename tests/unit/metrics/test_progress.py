"""Progress records: rate over recent seconds, time left, throttling, the old callback
form, and the CLI's line."""

from __future__ import annotations

import io

import pytest

from edge_runtime.cli.progress_line import ProgressLine, describe
from edge_runtime.sdk.progress import ProgressEvent, ProgressMeter, as_callback


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_meter_reports_rate_time_left_and_always_the_end() -> None:
    clock, events = Clock(), []
    meter = ProgressMeter("sending", 1000, events.append, agent="a", clock=clock,
                          min_interval_s=0.5)
    clock.now += 1.0
    meter.advance(100)  # first update: told
    clock.now += 0.1
    meter.advance(100)  # 0.1 s later: throttled
    clock.now += 0.9
    meter.advance(100)  # 1.0 s after the last told: told
    assert [e.done for e in events] == [100, 300]
    last = events[-1]
    assert last.rate == pytest.approx(300 / 2.0)
    assert last.eta_s == pytest.approx(700 / 150)
    assert last.elapsed_s == pytest.approx(2.0) and not last.finished
    clock.now += 0.01
    meter.update(1000)  # the end is told however soon
    assert events[-1].finished and events[-1].eta_s == 0.0 and events[-1].fraction == 1.0


def test_rate_forgets_old_samples_so_a_stall_shows() -> None:
    clock = Clock()
    meter = ProgressMeter("sending", 10_000, None, clock=clock, min_interval_s=0)
    for _ in range(10):
        clock.now += 0.5
        meter.advance(500)
    fast = meter.event().rate
    clock.now += 10.0  # nothing for ten seconds
    meter.advance(1)
    assert meter.event().rate < fast / 5


def test_unknown_total_has_no_time_left() -> None:
    clock = Clock()
    meter = ProgressMeter("reading", 0, None, clock=clock)
    clock.now += 1
    meter.advance(10)
    event = meter.event()
    assert event.eta_s is None and event.fraction is None and not event.finished


def test_old_three_argument_callbacks_still_work() -> None:
    seen: list[tuple[str, int, int]] = []

    def old(agent: str, done: int, total: int) -> None:
        seen.append((agent, done, total))

    callback = as_callback(old)
    assert callback is not None
    callback(ProgressEvent("t", "pi", 5, 10, 1.0, 5.0, 1.0))
    assert seen == [("pi", 5, 10)]
    new: list[ProgressEvent] = []
    assert as_callback(new.append) == new.append  # one argument: used as it is
    assert as_callback(None) is None


def test_progress_line_in_a_log_writes_whole_lines() -> None:
    stream = io.StringIO()
    line = ProgressLine(stream)
    line(ProgressEvent("sending checkpoint files", "agent1", 12_300_000, 45_600_000, 2.0,
                       5_100_000.0, 6.5))
    line(ProgressEvent("sending checkpoint files", "agent1", 20_000_000, 45_600_000, 3.0,
                       5_100_000.0, 5.0))  # within LOG_INTERVAL_S: not logged
    line(ProgressEvent("sending checkpoint files", "agent1", 45_600_000, 45_600_000, 9.0,
                       5_100_000.0, 0.0))
    assert stream.getvalue().splitlines() == [
        "sending checkpoint files to agent1: 12.3 MB / 45.6 MB (27%), 5.1 MB/s, 6 s left",
        "sending checkpoint files to agent1: 45.6 MB / 45.6 MB (100%), 5.1 MB/s, "
        "done in 9.0 s"]
    assert describe(ProgressEvent("converting", "", 3, 0, 1.0, 3.0, None, unit="layers")) \
        == "converting: 3 layers, 3 layers/s, time left unknown"
