"""`edge-runtime bench serve --quick` through the real CLI: a tiny synthetic checkpoint on
local clusters of one and two agent processes, fp32 and 4-bit, 1/2/4/8 concurrent streams
through the `GenerationScheduler`. The JSON must hold a row for every (agents, variant,
streams) with positive measurements, the 4-vs-1 ratios for every configuration, and the
bench's own check that every batched greedy stream equals its prompt generated alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CLI = [sys.executable, "-m", "edge_runtime.cli.main"]
POSITIVE = ("tokens_per_s", "ms_per_token", "ttft_p50_ms", "ttft_p99_ms", "steps_per_token",
            "hub_compute_ms_per_step")


def test_quick_serve_bench_measures_every_row_and_batched_outputs_equal_alone(
        tmp_path: Path) -> None:
    out = tmp_path / "serve.json"
    done = subprocess.run([*CLI, "bench", "serve", "--quick", "--workdir", str(tmp_path),
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "TTFT p99" in done.stdout and "targets at 4 streams vs 1" in done.stdout
    report = json.loads(out.read_text())
    assert report["suite"] == "serve" and report["quick"]
    assert report["max_batch"] == 8 and report["streams"] == [1, 2, 4, 8]
    rows = {(r["agents"], r["variant"], r["streams"]): r for r in report["rows"]}
    assert set(rows) == {(a, v, s) for a in (1, 2) for v in ("fp32", "q4")
                         for s in (1, 2, 4, 8)}
    for key, row in rows.items():
        for name in POSITIVE:
            assert row[name] > 0, (key, name, row)
        assert row["ttft_p99_ms"] >= row["ttft_p50_ms"], row
        # one sample per stream per round; every stream got all its tokens, all equal
        assert row["samples"] == key[2] * report["rounds"], row
        assert row["outputs_equal"] and row["streams_different_from_alone"] == 0, row
        # the streams shared steps: run one after another they would take `streams`
        # steps per token; a stream joining a step or two late costs a little more than 1
        if key[2] == 1:
            assert row["steps_per_token"] == 1.0, row
        else:
            assert row["steps_per_token"] < (1 + key[2]) / 2, row
    assert report["outputs_equal"] is True
    ratios = {(q["agents"], q["variant"]): q for q in report["ratios"]}
    assert set(ratios) == {(a, v) for a in (1, 2) for v in ("fp32", "q4")}
    for key, q in ratios.items():
        assert q["tokens_per_s_4_over_1"] > 0 and q["ms_per_token_4_over_1"] > 0, (key, q)
        assert q["tokens_per_s_4_over_1"] == rows[(*key, 4)]["tps_vs_1"]
