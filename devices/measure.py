"""Measure this device: the whole `DeviceProfile` in a few seconds of wall time.

Budget (this 2-core machine): onnxruntime import 0.35 s, fp32 + int8 matmul
2 x 0.35 s, streaming read 0.4 s, disk read 0.35 s (+ one-off probe write),
the rest is reading files. Well under the 5 s the issue allows, even on a Pi.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

from devices import cgroup, compute, disk, system
from devices.profile import DeviceProfile

log = logging.getLogger(__name__)


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
    try:
        disk_gbps, disk_method = disk.disk_read_gbps(cache_dir)
    except OSError as error:
        log.warning("disk read of %s failed (%s); not measured", cache_dir, error)
        disk_gbps, disk_method = 0.0, "unmeasured"
    total, available = system.memory(limits)
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
    )
    elapsed = round(time.perf_counter() - start, 3)
    log.info("profiled %s in %.2f s (cgroup v%s)", found.name, elapsed, limits.version)
    return replace(found, profile_seconds=elapsed)
