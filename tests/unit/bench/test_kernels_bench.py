"""`edge-runtime bench kernels` really runs: share processes load a 4-bit share fused and
per matrix, time both and report per share; the two stay within 4-bit noise."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_runtime.bench import kernels


def test_the_kernels_bench_times_both_variants_per_share(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    kernels.add_arguments(parser)
    args = parser.parse_args(["--shares", "2", "--steps", "5", "--workdir", str(tmp_path)])
    result = kernels.run(args)
    rows = result["shares"]
    assert [r["rank"] for r in rows] == [0, 1]
    for r in rows:
        assert r["fused_ms"] > 0 and r["per_matrix_ms"] > 0
        assert 0 < r["max_logit_diff"] < 0.5  # both 4-bit: close, not the same kernels
    assert result["median_ratio"] > 0
