"""The demo's report pieces: table layout, terminal fallbacks, progress lines, statistics."""

from __future__ import annotations

import io

import numpy as np
import pytest

from edge_runtime.demo.cluster_steps import agent_names
from edge_runtime.demo.render import Column, Console, fmt_bytes, fmt_ms
from edge_runtime.demo.stats import LatencyStats, accuracy, exit_counts, throughput
from edge_runtime.demo.steps import DemoContext, DemoOptions, StepFailed, run_steps


class _Ascii(io.StringIO):
    encoding = "ascii"


class _Tty(io.StringIO):
    encoding = "utf-8"

    def isatty(self) -> bool:
        return True


def test_table_columns_align_and_right_align_numbers() -> None:
    stream = io.StringIO()
    console = Console(stream, color=False, unicode=True)
    console.table([Column("device"), Column("ms", ">")], [["pi", "1.5"], ["jetson-orin", "12.25"]])
    lines = stream.getvalue().splitlines()
    assert len({len(line) for line in lines}) == 1  # every row as wide as the rules
    assert lines[0].startswith("  ┌") and lines[-1].startswith("  └")
    assert "│ pi          │   1.5 │" in lines[3]
    assert "│ jetson-orin │ 12.25 │" in lines[4]


def test_ascii_fallback_and_no_escape_codes_off_a_terminal() -> None:
    stream = _Ascii()
    console = Console(stream)  # not a tty, ascii encoding: no colour, no box characters
    console.title("demo", "sub")
    console.table([Column("a")], [["x"]])
    console.ok("done")
    text = stream.getvalue()
    text.encode("ascii")  # would raise on any box or check-mark character
    assert "\x1b[" not in text
    assert "+---+" in text and "ok done" in text


def test_colour_on_a_terminal_unless_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "\x1b[" in Console(_Tty()).style("x", "bold")
    monkeypatch.setenv("NO_COLOR", "1")
    assert Console(_Tty()).style("x", "bold") == "x"


def test_progress_writes_one_outcome_line_in_a_log() -> None:
    stream = io.StringIO()
    console = Console(stream, color=False, unicode=False)
    with console.progress("working") as line:
        line.update("halfway")  # terminal only
        line.done("worked")
    with pytest.raises(ValueError), console.progress("failing"):
        raise ValueError("boom")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("  ok worked (") and lines[1].startswith("  !! failing (")


def test_bar_and_formats() -> None:
    console = Console(io.StringIO(), unicode=False)
    assert console.bar(0.5, 10) == "#####     "
    assert console.bar(2.0, 4) == "####" and console.bar(-1, 3) == "   "
    assert fmt_ms(0.00123) == "1.23 ms" and fmt_ms(0.0456) == "45.6 ms" and fmt_ms(0.5) == "500 ms"
    assert fmt_bytes(1_850_000) == "1.9 MB" and fmt_bytes(512) == "512 B"


def test_latency_stats_match_numpy() -> None:
    samples = list(np.random.default_rng(0).exponential(0.01, 101))
    stats = LatencyStats.of(samples)
    assert stats.count == 101
    assert stats.p50_s == pytest.approx(float(np.median(samples)))
    assert stats.p99_s == pytest.approx(float(np.percentile(samples, 99)))
    assert stats.min_s <= stats.p50_s <= stats.p90_s <= stats.p99_s <= stats.max_s
    with pytest.raises(ValueError):
        LatencyStats.of([])


def test_accuracy_exit_counts_throughput_and_names() -> None:
    assert accuracy([1, 2, 3, 4], [1, 2, 0, 4]) == 0.75
    with pytest.raises(ValueError):
        accuracy([1], [1, 2])
    assert exit_counts(["exit1", None, "exit1"], ["exit1", "exit2", "final"]) == {
        "exit1": 2, "exit2": 0, "final": 1,
    }  # fmt: skip
    assert throughput(100, 2.0) == 50.0
    assert agent_names(["phone", "phone", "raspberry-pi-4"]) == [
        "phone",
        "phone-2",
        "raspberry-pi-4",
    ]


def test_a_failing_step_stops_the_run_with_its_message_and_closes_resources() -> None:
    closed: list[str] = []

    class Opens:
        title = "open"

        def run(self, ctx: DemoContext) -> None:
            ctx.exit_stack.callback(closed.append, "resource")

    class Fails:
        title = "fail"

        def run(self, ctx: DemoContext) -> None:
            raise StepFailed("the model is missing; pass --assets")

    class Never:
        title = "never"

        def run(self, ctx: DemoContext) -> None:
            raise AssertionError("must not run after a failure")

    stream = io.StringIO()
    ctx = DemoContext(Console(stream, color=False, unicode=False), DemoOptions())
    assert run_steps([Opens(), Fails(), Never()], ctx) == 1
    assert closed == ["resource"]
    text = stream.getvalue()
    assert "-- 1. open" in text and "-- 2. fail" in text and "3. never" not in text
    assert "!! fail failed: the model is missing; pass --assets" in text
