"""Which suites `bench all` runs, with which short settings, and how one is run.

Why a table of jobs: the report needs several runs of some suites (allreduce with and
without CURVE; the pipeline at 2 and 3 devices; the LLM at two window sizes), each
with settings short enough that the whole report takes about ten minutes on a 2-core
machine (`--quick`: about three). A job calls the suite's own `run(args)` with the
suite's own argument defaults plus the job's overrides, so the report measures
exactly what `edge-runtime bench SUITE ...` would, and says which command that is.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import logging
import os
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """One suite run: `key` names its results in the report."""

    key: str
    suite: str
    options: Mapping[str, Any] = field(default_factory=dict)  # argument dest -> value
    env: Mapping[str, str] = field(default_factory=dict)  # it runs as a process with these

    def argv(self) -> list[str]:
        """The `edge-runtime bench SUITE ...` arguments that reproduce this run."""
        out = [self.suite]
        for dest, value in self.options.items():
            flag = "--" + dest.replace("_", "-")
            if value is True:
                out.append(flag)
            elif value is not False and value is not None:
                out += [flag, str(value)]
        return out

    @property
    def command(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return (env + " " if env else "") + "edge-runtime bench " + shlex.join(self.argv())


@dataclass
class Outcome:
    """What a job produced: its results, or why it failed, and how long it took."""

    job: Job
    results: dict[str, Any] | None
    seconds: float
    error: str = ""
    output: str = ""  # what the suite printed (its table)
    measured_by: str = ""  # the command, when it was run with other settings than now

    @property
    def command(self) -> str:
        return self.measured_by or self.job.command


LLM_SIZE = "1GB"
"""The LLM suites' checkpoint (the suite's default, four 2048-wide layers): blocks small
enough against a share that windows of ½ and ¼ of it are possible."""
LLM_SIZE_QUICK = "400MB"
"""`--quick`: the smallest the suite builds (one layer; the window holds most of it)."""


def jobs(quick: bool) -> list[Job]:
    """The runs of a report: short settings, or `quick` ones (a smoke run)."""
    reps = 20 if quick else 100
    sizes = "4K,256K,2M" if quick else "4K,32K,256K,1M,4M"
    # the security modes side by side in one run (the suite alternates them per size)
    allreduce = {"members": "2" if quick else "2,4", "sizes": sizes, "repeats": reps,
                 "links": "loopback", "security": "curve,sealed,insecure"}
    pipeline = {"requests": 20 if quick else 100, "warmup": 5}
    llm = {"size": LLM_SIZE_QUICK if quick else LLM_SIZE, "prompt_tokens": 16,
           "new_tokens": 4 if quick else 8, "repeats": 1 if quick else 2}
    out = [
        Job("allreduce", "allreduce", allreduce),
        Job("pipeline", "pipeline", {**pipeline, "agents": 2, "parts": "overhead,throughput"}),
        Job("pipeline_3", "pipeline", {**pipeline, "agents": 3, "parts": "throughput"}),
        # the calibration runs every image as one batch through emulated devices: on a
        # busy 2-core machine that takes longer than the SDK's default 30 s request timeout
        Job("exits", "pipeline", {"parts": "exits"}, {"EDGE_RUNTIME_REQUEST_S": "120"}),
        Job("plan", "plan", {"sizes": "50,500", "devices": "2,4", "repeats": 1,
                             "runs": 10 if quick else 40, "stages": 3}),
        Job("llm", "llm", {**llm, "agents": "1,2", "budget_fraction": 0.5}),
        Job("serve", "serve", {"quick": True, "agents": "1" if quick else "1,2",
                               "variants": "fp32", "streams": "1,2,4",
                               "rounds": 1 if quick else 2}),
        Job("faults", "faults", {"quick": True, "workloads": "pipeline" if quick
                                 else "pipeline,llm"}),
    ]
    if not quick:
        out[6:6] = [
            Job("llm_quarter", "llm", {**llm, "agents": "2", "budget_fraction": 0.25}),
            # CURVE + sealed collectives vs neither, alternating round by round
            Job("llm_security", "llm", {**llm, "agents": "2", "budget_fraction": 0.0,
                                        "security": "curve,insecure"}),
            # each split strategy's predicted ms/token against its measured one
            Job("llm_strategies", "llm", {**llm, "agents": "3", "repeats": 1,
                                          "links": "loopback",
                                          "strategies": "single,tensor,pipeline,hybrid"}),
        ]
    return out


def suite_args(suite: str, options: Mapping[str, Any], out: Path) -> argparse.Namespace:
    """The suite's own defaults (its `add_arguments`) with `options` on top; an option the
    suite does not have (another release) is dropped with a warning, not an error."""
    module = importlib.import_module(f"edge_runtime.bench.{suite}")
    parser = argparse.ArgumentParser(prog=f"edge-runtime bench {suite}")
    parser.add_argument("--out", type=Path, default=None)
    module.add_arguments(parser)
    args = parser.parse_args([])
    for dest, value in options.items():
        if not hasattr(args, dest):
            log.warning("bench %s has no option %s; running without it", suite, dest)
            continue
        setattr(args, dest, value)
    args.out = out
    return args


def run_job(job: Job, json_dir: Path, echo: bool = True) -> Outcome:
    """Run one job, keep its printed table, write its JSON to `json_dir/<key>.json`."""
    if job.env:
        return _run_process(job, json_dir, echo)
    module = importlib.import_module(f"edge_runtime.bench.{job.suite}")
    out = json_dir / f"{job.key}.json"
    args = suite_args(job.suite, job.options, out)
    printed = io.StringIO()
    started = time.perf_counter()
    argv = sys.argv
    sys.argv = ["edge-runtime", "bench", *job.argv()]  # what suites record as "command"
    try:
        with contextlib.redirect_stdout(_Tee(printed, sys.stdout if echo else None)):
            results: dict[str, Any] = module.run(args)
    except Exception as error:  # a failed suite is reported; the others still run
        log.debug("bench %s failed", job.key, exc_info=True)
        why = "".join(traceback.format_exception_only(error)).strip()[-2000:]
        return Outcome(job, None, time.perf_counter() - started, why, printed.getvalue())
    finally:
        sys.argv = argv
    json_dir.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, sort_keys=True, default=str))
    return Outcome(job, results, time.perf_counter() - started, output=printed.getvalue())


def _run_process(job: Job, json_dir: Path, echo: bool) -> Outcome:
    """A job with environment settings runs as `edge-runtime bench ...` in a process of
    its own: the SDK reads EDGE_RUNTIME_* once, when it is imported."""
    json_dir.mkdir(parents=True, exist_ok=True)
    out = json_dir / f"{job.key}.json"
    command = [sys.executable, "-m", "edge_runtime.cli.main", "bench", *job.argv(),
               "--out", str(out)]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env={**os.environ, **job.env})
    printed = []
    assert process.stdout is not None
    for line in process.stdout:
        printed.append(line)
        if echo:
            print(line, end="", flush=True)
    code = process.wait()
    seconds = time.perf_counter() - started
    if code != 0 or not out.is_file():
        why = "".join(printed[-5:]).strip()[-2000:] or f"exit status {code}"
        return Outcome(job, None, seconds, why, "".join(printed))
    return Outcome(job, json.loads(out.read_text()), seconds, output="".join(printed))


class _Tee(io.TextIOBase):
    """Writes to a buffer and, optionally, on to the terminal (progress stays visible)."""

    def __init__(self, buffer: io.StringIO, echo: Any) -> None:
        self._buffer, self._echo = buffer, echo

    def write(self, text: str) -> int:
        self._buffer.write(text)
        if self._echo is not None:
            self._echo.write(text)
        return len(text)

    def flush(self) -> None:
        if self._echo is not None:
            self._echo.flush()


__all__ = ["LLM_SIZE", "LLM_SIZE_QUICK", "Job", "Outcome", "jobs", "run_job", "suite_args"]
