"""`edge-runtime bench all --report DIR`: every suite, short settings, one report with plots.

    edge-runtime bench all --report bench-report            # about ten minutes, 2 cores
    edge-runtime bench all --report bench-report --quick    # a few minutes: a smoke run

Runs the jobs of `report_suites.jobs` (each suite's own `run`, with short settings),
saves each run's JSON in DIR/json/, draws the figures of `report_figures` as PNGs in
DIR, and writes DIR/report.md linking them with the key numbers and the command of
each run. A suite that fails is listed with its error; the others still report.
Figures need matplotlib (the `plots` extra).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from edge_runtime.bench.report_suites import Job, Outcome

DEFAULT_DIR = Path("bench-report")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--report", type=Path, default=DEFAULT_DIR, metavar="DIR",
                        help=f"folder for report.md, its PNG plots and json/ (default "
                             f"{DEFAULT_DIR})")
    parser.add_argument("--quick", action="store_true",
                        help="smoke settings: fewer sizes, repeats and variants")
    parser.add_argument("--only", default="", metavar="RUN,...",
                        help="run only these runs (names as in the report's Runs table)")
    parser.add_argument("--redraw", action="store_true",
                        help="measure nothing: draw the figures and report.md again from "
                             "DIR/json/ (after changing a figure, or to add a run with --only)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from edge_runtime.bench.report_figures import Stamp, draw_all
    from edge_runtime.bench.report_markdown import machine, today, write_markdown
    from edge_runtime.bench.report_suites import jobs, run_job
    from edge_runtime.errors import ConfigError
    from edge_runtime.trace.render import pyplot

    pyplot()  # no matplotlib: say so before ten minutes of measuring
    folder: Path = args.report
    planned = jobs(args.quick)
    only = {k.strip() for k in args.only.split(",") if k.strip()}
    unknown = only - {j.key for j in planned}
    if unknown:
        raise ConfigError(f"--only: no run named {sorted(unknown)}; the runs are "
                          f"{[j.key for j in planned]}")
    planned = [j for j in planned if not only or j.key in only]
    command = "edge-runtime " + shlex.join(sys.argv[1:])
    started = time.perf_counter()
    outcomes = saved(planned, folder / "json") if args.redraw else []
    for index, job in enumerate([] if args.redraw else planned, start=1):
        print(f"\n=== [{index}/{len(planned)}] {job.command}", flush=True)
        outcome = run_job(job, folder / "json")
        status = "ok" if outcome.results is not None else f"FAILED: {outcome.error[:300]}"
        print(f"=== {job.key}: {status} ({outcome.seconds:.0f} s)", flush=True)
        outcomes.append(outcome)
    if not args.redraw and only:  # runs measured before, not asked for now, stay in
        outcomes += [o for o in saved(jobs(args.quick), folder / "json")
                     if o.job.key not in only]
    seconds = time.perf_counter() - started
    if not args.redraw:
        _remember(outcomes, folder / "json" / RUNS_FILE)
    stamp = Stamp(machine(), today(), {o.job.key: o.command for o in outcomes})
    results = {o.job.key: o.results for o in outcomes if o.results is not None}
    figures = draw_all(results, folder, stamp)
    page = folder / "report.md"
    page.write_text(write_markdown(outcomes, figures, command, seconds, stamp.machine,
                                   stamp.date))
    print(f"\nreport: {page} ({len(figures)} figures, {len(outcomes)} runs, "
          f"{sum(o.results is None for o in outcomes)} failed) in {seconds / 60:.1f} min")
    return {"report": str(page), "figures": [f.file for f in figures],
            "runs": {o.job.key: {"command": o.command, "seconds": o.seconds,
                                 "error": o.error or None} for o in outcomes}}


RUNS_FILE = "runs.json"
"""In DIR/json/: each run's command, seconds and error, for `--redraw` and `--only`."""


def _remember(outcomes: list[Outcome], path: Path) -> None:
    known = json.loads(path.read_text()) if path.is_file() else {}
    known.update({o.job.key: {"command": o.command, "seconds": o.seconds, "error": o.error}
                  for o in outcomes})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(known, indent=2, sort_keys=True))


def saved(planned: list[Job], folder: Path) -> list[Outcome]:
    """The outcomes of `planned` runs an earlier report left in `folder` (its JSON, and the
    command and time it recorded; a run that failed then is listed as failed)."""
    runs_file = folder / RUNS_FILE
    known = json.loads(runs_file.read_text()) if runs_file.is_file() else {}
    found = []
    for job in planned:
        path, run = folder / f"{job.key}.json", known.get(job.key, {})
        results = json.loads(path.read_text()) if path.is_file() else None
        if results is None and not run.get("error"):
            continue  # never measured here
        found.append(Outcome(job, results, float(run.get("seconds", 0.0)),
                             str(run.get("error") or ""), measured_by=str(run.get("command", ""))))
    return found


__all__ = ["DEFAULT_DIR", "add_arguments", "run", "saved"]
