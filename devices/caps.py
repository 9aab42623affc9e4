"""Resource caps: make a local process behave like a slower, smaller device.

A local cluster of agents on one machine should show what a Pi 4, a Jetson and a
phone would do together, not three copies of this machine. A `ResourceCaps`
carries what makes the difference:

- `threads`: CPU affinity and thread-pool sizes (OMP/OpenBLAS/MKL env vars, which
  native libraries read once at load, hence `caps_environment` for a parent to
  pass to a child before it imports numpy or onnxruntime);
- `memory_budget_bytes`: what the agent may hold (the layer window and shard
  cache honour it; `apply_caps(..., hard_memory_limit=True)` also enforces it
  with RLIMIT_DATA so a bug fails with MemoryError instead of swapping the host);
- `dilation`: how many times slower the emulated device computes than this host
  does with those threads; `dilate` sleeps the difference after each busy span.

Emulated profiles always carry `emulated_preset`, so every label and table says
"(emulated)": a number from emulation must never pass for a measurement.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import logging
import os
import resource
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from devices import presets
from devices.errors import DeviceError
from devices.profile import DeviceProfile

log = logging.getLogger(__name__)

#: The env var that carries the whole caps record (JSON) to a child process.
ENV_CAPS = "EDGE_RUNTIME_CAPS"
#: Thread-count variables read by OpenMP, OpenBLAS, MKL, Accelerate and numexpr at load time.
THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


@dataclass(frozen=True)
class ResourceCaps:
    """Limits that make this process stand in for another device.

    `cpus` pins the process to those CPU ids (None: the first `threads` CPUs it may
    use now); a local cluster gives each agent disjoint CPUs where it has enough.
    """

    preset: str | None
    threads: int
    memory_budget_bytes: int
    dilation: float = 1.0
    cpus: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise DeviceError(f"caps need at least 1 thread, got {self.threads}")
        if self.memory_budget_bytes < 0:
            raise DeviceError("a memory budget cannot be negative")
        if not self.dilation >= 1.0:  # also rejects NaN
            raise DeviceError(f"dilation must be >= 1.0, got {self.dilation}")
        if self.cpus is not None and len(self.cpus) < 1:
            raise DeviceError("cpus, when given, must name at least one CPU")

    def label(self) -> str:
        name = self.preset or "custom caps"
        return (
            f"{name} (emulated: {self.threads} threads, "
            f"{self.memory_budget_bytes / 1e9:.2f} GB, {self.dilation:.2f}x slower)"
        )

    def to_dict(self) -> dict[str, object]:
        data = dataclasses.asdict(self)
        data["cpus"] = None if self.cpus is None else list(self.cpus)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> ResourceCaps:
        """Inverse of `to_dict`; raises DeviceError naming what is wrong."""
        threads, budget = data.get("threads"), data.get("memory_budget_bytes")
        dilation, preset, cpus = data.get("dilation", 1.0), data.get("preset"), data.get("cpus")
        if not isinstance(threads, int) or not isinstance(budget, int):
            raise DeviceError(f"caps need integer threads and memory_budget_bytes: {data!r}")
        if not isinstance(dilation, int | float) or not (preset is None or isinstance(preset, str)):
            raise DeviceError(f"caps need a numeric dilation and a string preset: {data!r}")
        if cpus is not None and not (
            isinstance(cpus, list | tuple) and all(isinstance(c, int) for c in cpus)
        ):
            raise DeviceError(f"resource caps cpus must be a list of CPU ids: {cpus!r}")
        return cls(
            preset=preset,
            threads=threads,
            memory_budget_bytes=budget,
            dilation=float(dilation),
            cpus=None if cpus is None else tuple(cpus),
        )


def host_gflops(host: DeviceProfile, threads: int) -> float:
    """This host's fp32 throughput with `threads` threads (linear share of all cores)."""
    return host.gflops_fp32 * min(threads, host.cores) / host.cores


def caps_for_preset(
    name: str, host: DeviceProfile, *, cpus: tuple[int, ...] | None = None
) -> ResourceCaps:
    """The caps that make a process on `host` behave like preset `name`.

    threads = the preset's cores, at most the host's (and the CPUs given);
    memory budget = the preset's available memory, at most the host's;
    dilation = host GFLOPS at those threads / preset GFLOPS, at least 1
    (a preset faster than this host cannot be emulated faster; it runs at host speed).
    """
    target = presets.get(name)
    threads = min(target.cores, host.cores, len(cpus) if cpus else host.cores)
    achievable = host_gflops(host, threads)
    dilation = max(1.0, achievable / target.gflops_fp32)
    if achievable < target.gflops_fp32:
        log.warning(
            "%s (%.0f GFLOPS) is faster than this host with %d threads (%.0f GFLOPS); "
            "emulating it at host speed",
            target.name,
            target.gflops_fp32,
            threads,
            achievable,
        )
    return ResourceCaps(
        preset=target.name,
        threads=threads,
        memory_budget_bytes=min(target.mem_available_bytes, host.mem_available_bytes),
        dilation=round(dilation, 4),
        cpus=cpus,
    )


def emulated_profile(name: str, host: DeviceProfile) -> DeviceProfile:
    """The profile an emulated agent reports: the preset's figures, labelled emulated.

    Backends are the host's (what the agent can really run); memory available is
    the caps' budget; battery and temperature are None (a preset has no sensors).
    A preset faster than this host reports the host's throughput instead (both
    fp32 and int8 scaled alike): a plan must expect the speed the agent delivers.
    """
    target = presets.get(name)
    caps = caps_for_preset(name, host)
    achievable = host_gflops(host, caps.threads)
    scale = min(1.0, achievable / target.gflops_fp32)
    return dataclasses.replace(
        target,
        gflops_fp32=round(target.gflops_fp32 * scale, 3),
        gflops_int8=round(target.gflops_int8 * scale, 3),
        backends=host.backends,
        mem_available_bytes=caps.memory_budget_bytes,
        emulated_preset=target.name,
        measured_at=host.measured_at,
        source="emulated",
    )


def caps_environment(caps: ResourceCaps) -> dict[str, str]:
    """Env vars for a child process: thread pools sized before any native library loads."""
    env = {var: str(caps.threads) for var in THREAD_ENV_VARS}
    env[ENV_CAPS] = json.dumps(caps.to_dict(), sort_keys=True)
    return env


def caps_from_environment(env: Mapping[str, str] | None = None) -> ResourceCaps | None:
    """The caps a parent passed in `EDGE_RUNTIME_CAPS`, or None when there are none."""
    text = (os.environ if env is None else env).get(ENV_CAPS)
    if not text:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise DeviceError(f"{ENV_CAPS} is not valid JSON ({error}); unset it or fix it") from error
    if not isinstance(data, dict):
        raise DeviceError(f"{ENV_CAPS} must hold a JSON object")
    return ResourceCaps.from_dict(data)


def _pin_cpus(caps: ResourceCaps) -> tuple[int, ...]:
    allowed = sorted(os.sched_getaffinity(0))
    if caps.cpus is not None:
        missing = set(caps.cpus) - set(allowed)
        if missing:
            raise DeviceError(
                f"caps pin CPUs {sorted(missing)} this process may not use (allowed: {allowed})"
            )
        chosen = tuple(caps.cpus)
    else:
        chosen = tuple(allowed[: caps.threads])
    os.sched_setaffinity(0, chosen)
    return chosen


def apply_caps(caps: ResourceCaps, *, hard_memory_limit: bool = False) -> None:
    """Apply `caps` to the CURRENT process: affinity, thread pools, optional RLIMIT_DATA.

    Env vars are set too (for libraries loaded later and for children), and thread
    pools already loaded are resized through threadpoolctl when it is installed.
    onnxruntime sizes its pool per session: pass `caps.threads` as
    `SessionOptions.intra_op_num_threads`.
    """
    chosen: tuple[int, ...] = ()
    if hasattr(os, "sched_setaffinity"):
        chosen = _pin_cpus(caps)
    os.environ.update(caps_environment(caps))
    try:  # optional (scikit-learn pulls it in); imported by name as it ships no type hints
        importlib.import_module("threadpoolctl").threadpool_limits(limits=caps.threads)
    except ImportError:
        log.debug("threadpoolctl not installed; loaded BLAS pools keep their size")
    if hard_memory_limit:
        _, hard = resource.getrlimit(resource.RLIMIT_DATA)
        soft = caps.memory_budget_bytes
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))
    log.info("applied %s on CPUs %s", caps.label(), list(chosen))


def dilate(caps: ResourceCaps, busy_seconds: float) -> None:
    """Sleep (dilation - 1) x busy_seconds, so a busy span looks like the slower device's."""
    if busy_seconds < 0:
        raise DeviceError(f"busy_seconds must be >= 0, got {busy_seconds}")
    extra = (caps.dilation - 1.0) * busy_seconds
    if extra > 0:
        time.sleep(extra)


@contextlib.contextmanager
def dilated(caps: ResourceCaps | None) -> Iterator[None]:
    """Time the block's wall time and `dilate` by it on exit (a no-op for None caps)."""
    start = time.perf_counter()
    yield
    if caps is not None:
        dilate(caps, time.perf_counter() - start)
