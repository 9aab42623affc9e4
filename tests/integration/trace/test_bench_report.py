"""`edge-runtime bench all --report DIR`: real suites, run through the report, give a page
whose figures exist; `--redraw` draws them again from the saved JSON alone."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

CLI = [sys.executable, "-m", "edge_runtime.cli.main", "bench", "all"]


def test_a_short_report_with_real_suites(tmp_path: Path) -> None:
    folder = tmp_path / "report"
    done = subprocess.run([*CLI, "--quick", "--only", "plan,serve", "--report", str(folder),
                           "--out", str(tmp_path / "all.json")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    page = (folder / "report.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", page)
    assert set(linked) == {"predicted_measured.png", "llm_streams.png"}
    for name in linked:
        png = folder / name
        assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 20_000
    assert {p.name for p in (folder / "json").iterdir()} == {"plan.json", "serve.json",
                                                            "runs.json"}
    assert "`edge-runtime bench plan --sizes 50,500" in page
    assert "| plan |" in page and "| serve |" in page and "Failed runs" not in page
    before = (folder / "llm_streams.png").stat().st_mtime_ns
    (folder / "llm_streams.png").unlink()
    again = subprocess.run([*CLI, "--quick", "--redraw", "--report", str(folder), "--out",
                            str(tmp_path / "again.json")], capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (folder / "llm_streams.png").stat().st_mtime_ns > before


def test_a_run_with_settings_in_its_environment_runs_as_its_own_process(
        tmp_path: Path) -> None:
    from edge_runtime.bench.report_suites import Job, run_job

    job = Job("plan", "plan", {"skip_planning": True, "runs": 3, "stages": 2},
              {"EDGE_RUNTIME_REQUEST_S": "99"})
    assert job.command.startswith("EDGE_RUNTIME_REQUEST_S=99 edge-runtime bench plan ")
    outcome = run_job(job, tmp_path, echo=False)
    assert outcome.error == "" and outcome.results is not None
    assert "stages" in outcome.results["latency"]
    assert (tmp_path / "plan.json").is_file() and "measured/predicted" in outcome.output
    broken = run_job(Job("bad", "no-such-suite", {}, {"EDGE_RUNTIME_REQUEST_S": "99"}),
                     tmp_path, echo=False)
    assert broken.results is None and "no-such-suite" in broken.error
