"""Measure this device: the whole `DeviceProfile` in a few seconds of wall time.

Budget (this 2-core machine): onnxruntime import 0.35 s, fp32 + int8 matmul
2 x 0.35 s, streaming read 0.4 s, decode probes 2 x 0.3 s, disk read 0.35 s
(+ one-off probe write), the rest is reading files. Well under the 5 s the issue
allows, even on a Pi.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

from devices import cgroup, compute, disk, system
from devices.profile import DeviceProfile

log = logging.getLogger(__name__)

#: The decode probe's weight matrix: 4096 x 8192 fp32 = 128 MB, as the streaming read's
#: (64 MB read back at 52 GB/s from the dev VM's caches: L3 32 MB as reported).
DECODE_ROWS, DECODE_COLS = 4096, 8192
DECODE_BUDGET_S = 0.3
DECODE_WINDOWS = 3


def decode_gbps(rows: int = DECODE_ROWS, cols: int = DECODE_COLS,
                budget_s: float = DECODE_BUDGET_S, threads: int = 1) -> float:
    """GB/s of fp32 weights that numpy `x @ W` (one token's row vector) streams — the
    kernel an LLM decode step runs, with this process's BLAS threads — summed over
    `threads` products at once, each over its own matrix (agents sharing a machine
    share its memory controller: 2 cores here stream no more than one). The best of
    `DECODE_WINDOWS` medians, each of rounds filling a share of `budget_s`: a rate kept
    up for a while (a single run's best was served from caches), in the quietest
    window (a busy neighbour on the shared dev box took single windows to 4 GB/s)."""
    mats = [np.ones((rows, cols), dtype=np.float32) for _ in range(threads)]
    x = np.ones((1, rows), dtype=np.float32)

    def one(w: np.ndarray) -> object:
        return x @ w

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, mats))  # warm-up: page faults, kernel selection
        nbytes = sum(w.nbytes for w in mats)
        medians = []
        for _ in range(DECODE_WINDOWS):
            rates: list[float] = []
            start = time.perf_counter()
            while (len(rates) < compute.MIN_RUNS
                   or time.perf_counter() - start < budget_s / DECODE_WINDOWS):
                t0 = time.perf_counter()
                list(pool.map(one, mats))
                rates.append(nbytes / max(time.perf_counter() - t0, 1e-9))
            medians.append(float(np.median(rates)))
    return max(medians) / 1e9


def measure(
    cache_dir: Path,
    *,
    name: str | None = None,
    cgroup_root: Path = cgroup.DEFAULT_ROOT,
) -> DeviceProfile:
    """Measure this device now; the disk probe lives in `cache_dir`."""
    start = time.perf_counter()
    limits = cgroup.read_limits(cgroup_root)
    cores = system.usable_cores(limits)
    gflops_fp32, gflops_int8, engine = compute.matmul_gflops(threads=cores)
    bandwidth = compute.memory_bandwidth_gbps()
    total, available = system.memory(limits)
    decode = decode_gbps()
    # all cores at once, up to 4 (128 MB each), never over a quarter of free memory
    matrix = DECODE_ROWS * DECODE_COLS * 4
    threads = max(1, min(cores, 4, available // (4 * matrix)))
    host_decode = decode_gbps(threads=threads) if threads > 1 else decode
    try:
        disk_gbps, disk_method = disk.disk_read_gbps(cache_dir)
    except OSError as error:
        log.warning("disk read of %s failed (%s); not measured", cache_dir, error)
        disk_gbps, disk_method = 0.0, "unmeasured"
    found = DeviceProfile(
        name=name or system.host_name(),
        arch=system.arch(),
        os=system.os_name(),
        cores=cores,
        freq_mhz=system.freq_mhz(),
        gflops_fp32=round(gflops_fp32, 3),
        gflops_int8=round(gflops_int8, 3),
        mem_total_bytes=total,
        mem_available_bytes=available,
        mem_bandwidth_gbps=round(bandwidth, 3),
        disk_read_gbps=round(disk_gbps, 3),
        backends=system.backends(),
        battery_percent=system.battery_percent(),
        temperature_c=system.temperature_c(),
        emulated_preset=None,
        measured_at=time.time(),
        profile_seconds=0.0,
        disk_read_method=disk_method,
        compute_engine=engine,
        source="measured",
        decode_gbps=round(decode, 3),
        host_decode_gbps=round(host_decode, 3),
    )
    elapsed = round(time.perf_counter() - start, 3)
    log.info("profiled %s in %.2f s (cgroup v%s)", found.name, elapsed, limits.version)
    return replace(found, profile_seconds=elapsed)
