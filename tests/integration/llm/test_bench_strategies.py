"""`bench llm --strategies` for real: two agents, two links switched without restarting
the cluster, every column of the table filled from a measurement, auto's verdicts.

The tiny checkpoint of examples/tinylm stands in for `bench llm`'s synthetic one (which
is at least 450 MB): the same `run_strategies`, with `bench llm`'s own arguments.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from edge_runtime.bench import llm as bench_llm
from edge_runtime.bench.llm_strategies import run_strategies
from edge_runtime.llm import Checkpoint

TINY = Path(__file__).resolve().parents[3] / "examples" / "tinylm" / "checkpoint"


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench_llm.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_two_agents_two_links_every_column_measured(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ckpt = Checkpoint(TINY)
    args = _args("--strategies", "single,tensor,pipeline,auto", "--links", "loopback,10:100",
                 "--agents", "2", "--repeats", "1", "--prompt-tokens", "12",
                 "--new-tokens", "8", "--workdir", str(tmp_path))
    results = run_strategies(args, TINY, ckpt.config, ckpt.digest)
    by_link = results["by_agents"]["2"]
    assert list(by_link) == ["loopback", "10:100"]
    for link, rows in by_link.items():
        for strategy in ("single", "tensor", "pipeline"):  # tensor: a group on emulated links
            row = rows[strategy]
            assert row["layout"] == strategy, (link, row)
            for key in ("predicted_ms_per_token", "measured_ms_per_token",
                        "predicted_tokens_per_s", "measured_tokens_per_s",
                        "predicted_ttft_s", "ttft_s"):
                assert row[key] > 0, (link, strategy, key)
            # the agents' own serving peak: every agent of the layout, an interpreter's worth
            assert len(row["peak_rss_mib"]) == (1 if strategy == "single" else 2)
            assert all(v > 50 for v in row["peak_rss_mib"].values()), row
        for objective in ("latency", "throughput"):
            v = rows["auto"][objective]
            assert v["chose"] in rows and v["measured_best"] in ("single", "tensor", "pipeline")
            assert isinstance(v["picked_best"], bool) and isinstance(v["same_layout"], bool)
    # the link was switched without restarting the cluster: 10 ms round trips to the
    # coordinator and between the stages show in every pipelined token
    slow, fast = by_link["10:100"]["pipeline"], by_link["loopback"]["pipeline"]
    assert slow["measured_ms_per_token"] > fast["measured_ms_per_token"] + 7
    assert slow["predicted_ms_per_token"] > fast["predicted_ms_per_token"] + 7
    out = capsys.readouterr().out
    assert "2 agent(s)" in out and "auto (latency) chose" in out
    assert "auto (throughput) chose" in out and "10:100" in out
    # the agents' shard caches are the bench's own, kept for the next run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent-cache-0", "agent-cache-1"]
