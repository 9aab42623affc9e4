"""`bench llm --strategies`' rows and verdicts: medians against the predictions, auto's
choice against the measured best for each objective (pure: samples in, rows out)."""

from __future__ import annotations

import pytest

from edge_runtime.bench.llm_strategies_measure import Sample
from edge_runtime.bench.llm_strategies_report import (
    TIE_FRACTION,
    print_table,
    strategy_row,
    verdict,
)
from partitioner.llm_cost import LinkTable
from partitioner.llm_pipeline import plan_llm_layout
from partitioner.tensor_plan import DecoderShape

SHAPE = DecoderShape(hidden=256, intermediate=512, layers=4, heads=4, kv_heads=4,
                     head_dim=64, vocab=1000, max_context=256)


class Dev:
    def __init__(self, name: str) -> None:
        self.name = name
        self.mem_bandwidth_gbps = 10.0
        self.gflops_fp32 = 50.0


def _sample(ms: float, tps: float, rss: dict[str, int]) -> Sample:
    return Sample(0.2, (ms / 1e3,) * 5, tps, rss, 1.0)


def test_a_row_is_medians_against_the_predictions() -> None:
    layout = plan_llm_layout(SHAPE, [Dev("a"), Dev("b")], [[0], [1]],
                             links=LinkTable.uniform(2, 1e-4, 1e9), streams=4)
    runs = [_sample(10.0, 200.0, {"a": 100 << 20, "b": 90 << 20}),
            _sample(30.0, 100.0, {"a": 120 << 20, "b": 80 << 20}),
            _sample(20.0, 150.0, {"a": 110 << 20, "b": 85 << 20})]
    row = strategy_row(layout, runs, 0.1)
    assert row["measured_ms_per_token"] == pytest.approx(20.0)
    assert row["measured_tokens_per_s"] == pytest.approx(150.0)
    assert row["error"] == pytest.approx(20.0 / (layout.predicted_s_per_token * 1e3) - 1)
    assert row["tokens_per_s_error"] == pytest.approx(150.0 / layout.predicted_tokens_per_s - 1)
    assert row["ttft_error"] == pytest.approx(1.0)  # 0.2 s measured against 0.1 predicted
    assert row["measured_batch_gain"] == pytest.approx(150.0 * 0.020)
    assert row["peak_rss_mib"] == {"a": 120.0, "b": 90.0}  # each agent's highest
    assert row["layout"] == "pipeline" and row["groups"] == [["a"], ["b"]]


def test_auto_is_judged_per_objective_with_a_tie_margin(capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    rows = {"single": {"measured_ms_per_token": 50.0, "measured_tokens_per_s": 60.0},
            "tensor": {"measured_ms_per_token": 40.0, "measured_tokens_per_s": 100.0},
            "pipeline": {"error": "cannot run"}}
    assert verdict("tensor", rows, "latency", "")["picked_best"]
    assert not verdict("single", rows, "latency", "")["picked_best"]
    assert verdict("single", rows, "latency", "")["measured_best"] == "tensor"
    assert verdict("tensor", rows, "throughput", "")["picked_best"]
    assert not verdict("single", rows, "throughput", "")["picked_best"]
    near = {**rows, "single": {"measured_ms_per_token": 40.0 * (1 + TIE_FRACTION / 2),
                               "measured_tokens_per_s": 100.0 * (1 - TIE_FRACTION / 2)}}
    assert verdict("single", near, "latency", "")["picked_best"]
    assert verdict("single", near, "throughput", "")["picked_best"]
    assert not verdict("pipeline", rows, "latency", "")["picked_best"]  # it did not run
    print_table(2, {"wifi": {"pipeline": rows["pipeline"], "auto": {
        "latency": {**verdict("single", rows, "latency", ""), "same_layout": True}}}})
    out = capsys.readouterr().out
    assert "auto (latency) chose single ≠ measured best (tensor)" in out
    assert "pipeline  cannot run" in out
