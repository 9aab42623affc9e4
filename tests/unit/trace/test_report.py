"""The benchmark report's figures and page, from suite results shaped as the suites
return them (the suites themselves run in tests/integration/trace/test_bench_report.py)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import numpy as np

from edge_runtime.bench.report_figures import FIGURES, Stamp, draw_all
from edge_runtime.bench.report_markdown import write_markdown
from edge_runtime.bench.report_suites import Job, Outcome, jobs, suite_args


def _rows(n: int, what: str, scale: float, mode: str = "curve") -> list[dict[str, object]]:
    return [{"link": "loopback", "n": n, "bytes": b, "what": what, "median_us": scale * b ** 0.5,
             "p99_us": 2 * scale * b ** 0.5, "x_rtt": 1.2, "mode": mode}
            for b in (4096, 65536, 1048576)]


def _llm(fraction: float) -> dict[str, object]:
    def row(agents: int, streamed: bool, ms: float) -> dict[str, object]:
        return {"agents": agents, "streamed": streamed, "weights": "fp32", "ms_per_token": ms,
                "predicted_ms_per_token": ms / 2, "window_fraction": fraction if streamed
                else 1.0, "peak_rss_mib": {"a0": 300.0 * (fraction if streamed else 1.0),
                                           "a1": 280.0}}
    return {"variants": {"2 agent(s) resident": row(2, False, 30.0),
                         f"2 agent(s) window {fraction}": row(2, True, 90.0)}}


RESULTS = {
    "allreduce": {"rows": [*_rows(2, "rtt", 1.0), *_rows(2, "star", 1.3), *_rows(2, "ring", 1.5),
                           *_rows(2, "gloo", 1.1), *_rows(2, "star", 0.8, "insecure"),
                           {"link": "loopback", "n": 2, "bytes": 4096, "what": "choice",
                            "measured_best": "star", "predicted_best": "star"}]},
    "pipeline": {"overhead": {"onnxruntime_median_ms": 10.0, "agent_median_ms": 10.6,
                              "insecure_agent_median_ms": 10.4, "ratio": 1.06,
                              "insecure_ratio": 1.04},
                 "throughput": {"stage_devices": ["a", "b"], "ratio": 1.7,
                                "requests_per_s": {"2 stages": 170.0, "whole": 100.0}}},
    "pipeline_3": {"throughput": {"stage_devices": ["a", "b", "c"], "ratio": 2.1,
                                  "requests_per_s": {"3 stages": 200.0, "whole": 95.0}}},
    "exits": {"exits": {"images": 360, "mean_latency_speedup": 2.5,
                        "accuracy_change_points": -0.3,
                        "calibrated exits": {"accuracy": 0.95, "mean_ms": 8.0},
                        "always the last exit": {"accuracy": 0.953, "mean_ms": 20.0}}},
    "plan": {"latency": {"stages": [{"predicted_s": 0.001, "measured_s": 0.0012},
                                    {"predicted_s": 0.003, "measured_s": 0.0025}],
                         "median_ratio_default": 1.1, "worst_ratio_default": 1.4,
                         "median_ratio_held_out": 1.0, "worst_ratio_held_out": 1.2}},
    "llm": _llm(0.5),
    "llm_quarter": _llm(0.25),
    "llm_security": {"variants": {"2 agent(s) resident curve": {"ms_per_token": 32.0},
                                  "2 agent(s) resident insecure": {"ms_per_token": 30.0}},
                     "security": {"ratios": {"2 agent(s) resident": {"ms_per_token": 1.07,
                                                                     "ttft": 1.1}}}},
    "llm_strategies": {"links": {"loopback": {
        "tensor": {"layout": "tensor", "predicted_ms_per_token": 10.0,
                   "measured_ms_per_token": 14.0},
        "hybrid": {"error": "needs 3 agents"}}}},
    "serve": {"rows": [{"agents": 1, "variant": "fp32", "streams": s, "tokens_per_s": 40.0 * s,
                        "ms_per_token": 20.0 + s, "ttft_p50_ms": 50.0} for s in (1, 2, 4)]},
    "faults": {"summary": {"lost": 0, "duplicated": 0, "wrong": 0, "undetected": 0,
                           "median_detect_s": 0.12}},
}


def test_every_figure_is_drawn_and_the_page_links_them(tmp_path: Path) -> None:
    planned = {j.key: j for j in jobs(quick=False)}
    assert set(RESULTS) == set(planned)  # a figure or table for every run of a report
    stamp = Stamp("testbox (2 cores)", "2026-01-01 00:00 UTC",
                  {k: j.command for k, j in planned.items()})
    figures = draw_all(RESULTS, tmp_path, stamp)
    assert [f.file for f in figures] == [file for file, _ in FIGURES]
    for figure in figures:
        pixels = mpimg.imread(tmp_path / figure.file)
        assert pixels.shape[0] > 300 and pixels.shape[1] > 500
        assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 20  # not blank
    outcomes = [Outcome(planned[k], RESULTS[k], 3.0) for k in planned]
    outcomes.append(Outcome(Job("broken", "plan"), None, 1.0, "ConfigError: no disk"))
    page = write_markdown(outcomes, figures, "edge-runtime bench all --report x", 600.0,
                          "testbox (2 cores)", "2026-01-01 00:00 UTC")
    for figure in figures:
        assert f"]({figure.file})" in page
    assert "testbox (2 cores)" in page and "2026-01-01" in page
    assert "`edge-runtime bench llm --size" in page  # each figure says what measured it
    assert "| llm | 2 agent(s) window 0.5 | 90.0 | 45.0 | 3.00× |" in page  # vs the same agents
    assert "## Failed runs" in page and "ConfigError: no disk" in page
    assert "| 2 agent(s) resident | 1.07× | 1.10× |" in page
    assert "| loopback | tensor | tensor | 10.0 | 14.0 | 1.40 |" in page
    assert "cannot run: needs 3 agents" in page


def test_a_missing_suite_costs_only_its_figures(tmp_path: Path) -> None:
    stamp = Stamp("m", "d", {})
    figures = draw_all({"serve": RESULTS["serve"]}, tmp_path, stamp)
    assert [f.file for f in figures] == ["llm_streams.png"]
    assert draw_all({}, tmp_path / "none", stamp) == []


def test_jobs_use_the_suites_own_options() -> None:
    for quick in (True, False):
        for job in jobs(quick):
            args = suite_args(job.suite, job.options, Path("x.json"))
            for dest, value in job.options.items():
                assert getattr(args, dest) == value, (job.key, dest)
            assert f"edge-runtime bench {job.suite} " in job.command
    assert len(jobs(quick=True)) < len(jobs(quick=False))
