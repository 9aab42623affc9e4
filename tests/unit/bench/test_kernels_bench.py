"""`edge-runtime bench kernels` really runs: share processes load a 4-bit share fused and
per matrix, time both and report per share; the two stay within 4-bit noise; block sizes
are compared on the same matrices."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_runtime.bench import kernels


def test_the_kernels_bench_times_both_variants_per_share(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    kernels.add_arguments(parser)
    args = parser.parse_args(["--shares", "2", "--steps", "5", "--blocks", "32,64",
                              "--workdir", str(tmp_path)])
    result = kernels.run(args)
    rows = result["shares"]
    assert [r["rank"] for r in rows] == [0, 1]
    for r in rows:
        assert r["fused_ms"] > 0 and r["per_matrix_ms"] > 0
        assert r["max_logit_diff"] < 0.5  # both 4-bit: close (equal would be fine too)
        small, large = r["blocks"]["32"], r["blocks"]["64"]
        assert small["matrices"] == large["matrices"] > 0 and small["pass_ms"] > 0
        # a scale per 64 inputs rounds more coarsely than one per 32 (both well under 1)
        assert 0 < small["rel_error"] < large["rel_error"] < 0.5
    assert result["median_ratio"] > 0
