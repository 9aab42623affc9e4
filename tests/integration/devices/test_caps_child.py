"""Caps applied to a real child process: affinity, thread pools, memory limit, dilation."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from typing import Any

import pytest

from devices import caps_environment, caps_for_preset
from support.devices_fixtures import make_profile

CHILD = r"""
import json, os, time
from devices import apply_caps, caps_from_environment, dilated
caps = caps_from_environment()
if caps is not None:
    apply_caps(caps, hard_memory_limit=True)
import numpy as np
from threadpoolctl import threadpool_info
info = {
    "affinity": sorted(os.sched_getaffinity(0)),
    "omp": os.environ.get("OMP_NUM_THREADS"),
    "blas_threads": [pool["num_threads"] for pool in threadpool_info()],
}
start = time.perf_counter()
with dilated(caps):
    t0 = time.perf_counter()
    spins = 0
    while time.perf_counter() - t0 < 0.2:
        spins += 1
    info["busy"] = time.perf_counter() - t0
info["total"] = time.perf_counter() - start
if caps is not None:
    try:
        big = np.ones(2 * caps.memory_budget_bytes // 8)
        info["over_budget_alloc"] = "succeeded"
    except MemoryError:
        info["over_budget_alloc"] = "MemoryError"
print(json.dumps(info))
"""


def _run_child(env_extra: dict[str, str]) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "EDGE_RUNTIME_CAPS"}
    env.update(env_extra)
    done = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux CPU affinity")
def test_caps_take_effect_inside_a_child_process() -> None:
    allowed = sorted(os.sched_getaffinity(0))
    cpu = allowed[-1]
    host = make_profile(cores=len(allowed), gflops_fp32=36.0 * len(allowed))
    caps = caps_for_preset("raspberry-pi-4", host, cpus=(cpu,))
    caps = dataclasses.replace(caps, memory_budget_bytes=512 * 1024 * 1024)
    assert caps.threads == 1 and caps.dilation == pytest.approx(36.0 / 16.0, rel=1e-3)

    capped = _run_child(caps_environment(caps))
    assert capped["affinity"] == [cpu]
    assert capped["omp"] == "1"
    assert capped["blas_threads"] and set(capped["blas_threads"]) == {1}
    assert capped["over_budget_alloc"] == "MemoryError"
    ratio = float(capped["total"]) / float(capped["busy"])
    assert ratio == pytest.approx(caps.dilation, rel=0.15)  # sleep may overshoot under load

    free = _run_child({})  # the control: the same child without caps
    assert free["affinity"] == allowed
    ratio = float(free["total"]) / float(free["busy"])
    assert ratio == pytest.approx(1.0, abs=0.1)
