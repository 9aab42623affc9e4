"""Facts read rather than timed: cores, clock, arch/OS, backends, memory, sensors.

Cores honour CPU affinity (taskset, a cap applied by `devices.caps`) and a cgroup
CPU quota, because the planner must not give a device more parallel work than the
scheduler will let it run. Sensors are optional everywhere: a laptop has a
battery, a Pi has a thermal zone, a VM usually has neither, and None says so.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import platform
import re
from pathlib import Path

import psutil

from devices.cgroup import CgroupLimits, effective_memory

log = logging.getLogger(__name__)


def host_name() -> str:
    return platform.node() or "localhost"


def arch() -> str:
    return platform.machine() or "unknown"


def os_name() -> str:
    return f"{platform.system()} {platform.release()}".strip() or "unknown"


def usable_cores(limits: CgroupLimits) -> int:
    """CPUs this process may run on: affinity mask, then the cgroup quota (rounded up)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    if limits.cpu_quota_cores is not None:
        cores = min(cores, max(1, math.ceil(limits.cpu_quota_cores)))
    return max(1, cores)


def freq_mhz(cpuinfo: Path = Path("/proc/cpuinfo")) -> float:
    """Maximum clock if the kernel exposes cpufreq, else the current one, else 0."""
    try:
        freq = psutil.cpu_freq()
    except (OSError, NotImplementedError, RuntimeError):
        freq = None
    if freq is not None:
        best = max(freq.max, freq.current)
        if best > 0:
            return float(best)
    try:
        found = re.findall(r"cpu MHz\s*:\s*([0-9.]+)", cpuinfo.read_text())
    except OSError:
        found = []
    return max((float(v) for v in found), default=0.0)


def memory(limits: CgroupLimits) -> tuple[int, int]:
    """(total, available) bytes: psutil's figures capped by the cgroup limit."""
    vm = psutil.virtual_memory()
    return effective_memory(int(vm.total), int(vm.available), limits)


def backends() -> tuple[str, ...]:
    """Execution backends importable here: onnxruntime providers, LiteRT, tflite-runtime."""
    found: list[str] = []
    try:
        import onnxruntime as ort

        found.extend(f"onnxruntime:{p}" for p in ort.get_available_providers())
    except ImportError:
        log.info("onnxruntime is not importable here")
    try:
        if importlib.util.find_spec("ai_edge_litert") is not None:
            import ai_edge_litert.interpreter  # noqa: F401  (proves the native library loads)

            found.append("litert")
    except ImportError as error:
        log.info("LiteRT present but not importable: %s", error)
    if importlib.util.find_spec("tflite_runtime") is not None:
        # Not imported: tflite-runtime 2.14 built for NumPy 1 loads but fails later under
        # NumPy 2; the agent's backend checks it properly when asked to run a model.
        found.append("tflite")
    return tuple(found)


def battery_percent() -> float | None:
    try:
        battery = psutil.sensors_battery()
    except (AttributeError, OSError, NotImplementedError):
        return None
    return None if battery is None else float(battery.percent)


def temperature_c() -> float | None:
    """The hottest current reading of any sensor: what throttling will follow."""
    try:
        sensors = psutil.sensors_temperatures()
    except (AttributeError, OSError, NotImplementedError):
        return None
    readings = [t.current for entries in sensors.values() for t in entries if t.current > 0]
    return max(readings) if readings else None
