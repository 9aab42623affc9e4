"""`edge-runtime bench faults --quick` through the real CLI: an agent SIGKILLed in the
middle of a pipeline `run_many` and of a streamed LLM generation (three agent processes
each, the loss found on the wire), with every request journaled. The JSON must show the
fault was found and failed over, and that nothing was lost, answered twice, reordered or
changed — by request key, by token position and against the uninterrupted greedy run —
and that the journal marked every request delivered exactly once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CLI = [sys.executable, "-m", "edge_runtime.cli.main"]


def test_quick_fault_bench_loses_nothing_and_answers_nothing_twice(tmp_path: Path) -> None:
    out = tmp_path / "faults.json"
    done = subprocess.run([*CLI, "bench", "faults", "--quick", "--journal", "--out", str(out)],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "detect s" in done.stdout  # the table was printed
    report = json.loads(out.read_text())
    assert report["suite"] == "faults"
    assert report["timeouts"]["heartbeat_timeout_s"] == 1.0  # --quick's timeouts were used
    rows = {row["workload"]: row for row in report["scenarios"]}
    assert set(rows) == {"pipeline", "llm"}
    for workload, row in rows.items():
        assert row["fault"] == "kill" and row["fault_injected"], workload
        # the fault happened and was handled: the victim was marked lost and planned out
        assert row["failovers"] >= 1, row
        assert row["detect_s"] is not None and 0 < row["detect_s"] < 10, row
        assert row["recover_s"] is not None, row
        assert row["victim"] in row["marked_lost"], row
        assert row["victim"] not in row["agents_after"], row
        assert len(row["agents_after"]) == len(row["agents_before"]) - 1, row
        # nothing lost, nothing twice, nothing reordered, nothing changed
        assert row["lost"] == 0 and row["duplicated"] == 0, row
        assert row["delivered"] == row["requests"] >= 4, row
        assert not row["out_of_order"] and row["wrong"] == 0, row
        # the journal holds every request (warm-up included) as delivered, none open
        journal = row["journal"]
        assert journal["pending"] == journal["answered"] == journal["failed"] == 0, journal
        assert journal["delivered"] == row["warmup_requests"] + row["requests"], journal
    assert rows["pipeline"]["resent"] >= 1  # requests were in flight when the agent died
    llm = rows["llm"]
    assert llm["replays"] >= 1 and llm["ids_equal_uninterrupted"], llm
    assert llm["tokens"] == llm["requests"] * llm["tokens_per_generation"], llm
    assert llm["positions_missing"] == llm["positions_repeated"] == 0, llm
    assert llm["tokens_lost"] == llm["tokens_duplicated"] == llm["tokens_different"] == 0, llm
    assert report["summary"]["lost"] == report["summary"]["duplicated"] == 0
