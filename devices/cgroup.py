"""Memory and CPU limits from cgroups (v2 and v1), so containers report what they may use.

A device in a container sees the host's RAM in /proc/meminfo but is killed at its
cgroup limit; planning with the host figure would overcommit it. Everything here
reads files under a `root` directory passed in (default /sys/fs/cgroup) and the
text of /proc/self/cgroup, so tests point it at a fake tree: parsing, not mocking.

Limits of every ancestor cgroup apply, so we walk from the process's cgroup up to
the root and keep the smallest limit found. Usage counts page cache, which the
kernel reclaims before it kills anyone, so like `docker stats` we report the
working set: usage minus inactive file pages (memory.stat).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

log = logging.getLogger(__name__)

DEFAULT_ROOT = Path("/sys/fs/cgroup")
#: cgroup v1 writes "no limit" as a huge page-rounded number; anything at or above this is none.
_V1_UNLIMITED = 1 << 60


@dataclass(frozen=True)
class CgroupLimits:
    """What cgroups allow this process; None where no limit applies."""

    memory_limit_bytes: int | None
    memory_usage_bytes: int | None  # working set: usage minus inactive page cache
    cpu_quota_cores: float | None
    version: int | None  # 2, 1, or None when no cgroup files were found


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """Map controller -> path from /proc/self/cgroup ("" is the v2 unified entry)."""
    paths: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            paths[""] = path
        for controller in controllers.split(","):
            if controller:
                paths[controller] = path
    return paths


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max" or not text:
        return None
    try:
        return int(text)
    except ValueError:
        log.debug("ignoring unparsable cgroup file %s: %r", path, text)
        return None


def _ancestors(base: Path, cgroup_path: str) -> list[Path]:
    """base/a/b/c, base/a/b, base/a, base — innermost first, only existing dirs."""
    parts = [p for p in PurePosixPath(cgroup_path or "/").parts if p != "/"]
    dirs = [base.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]
    return [d for d in dirs if d.is_dir()]


def _min_limit(dirs: list[Path], filename: str, unlimited: int | None = None) -> int | None:
    limits = [v for d in dirs if (v := _read_int(d / filename)) is not None]
    if unlimited is not None:
        limits = [v for v in limits if v < unlimited]
    return min(limits) if limits else None


def _first(dirs: list[Path], filename: str) -> int | None:
    for d in dirs:
        value = _read_int(d / filename)
        if value is not None:
            return value
    return None


def _stat(dirs: list[Path], key: str) -> int:
    """One counter of the innermost memory.stat that has it (0 if none does)."""
    for d in dirs:
        try:
            lines = (d / "memory.stat").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value)
    return 0


def _working_set(dirs: list[Path], usage_file: str, inactive_key: str) -> int | None:
    usage = _first(dirs, usage_file)
    if usage is None:
        return None
    return max(0, usage - _stat(dirs, inactive_key))


def _v2_cpu(dirs: list[Path]) -> float | None:
    quotas: list[float] = []
    for d in dirs:
        try:
            quota, period = (d / "cpu.max").read_text().split()[:2]
        except (OSError, ValueError):
            continue
        if quota != "max" and int(period) > 0:
            quotas.append(int(quota) / int(period))
    return min(quotas) if quotas else None


def _v1_cpu(dirs: list[Path]) -> float | None:
    quotas: list[float] = []
    for d in dirs:
        quota = _read_int(d / "cpu.cfs_quota_us")
        period = _read_int(d / "cpu.cfs_period_us")
        if quota is not None and quota > 0 and period:
            quotas.append(quota / period)
    return min(quotas) if quotas else None


def read_limits(root: Path = DEFAULT_ROOT, proc_self_cgroup: str | None = None) -> CgroupLimits:
    """Read this process's cgroup memory and CPU limits under `root`.

    `proc_self_cgroup` is the text of /proc/self/cgroup (read from /proc if None).
    v2 is tried first (memory.max, memory.current, cpu.max in one unified tree),
    then v1 (memory/memory.limit_in_bytes, memory.usage_in_bytes, cpu/cpu.cfs_*).
    In a container whose cgroup namespace hides the path, the path from
    /proc/self/cgroup does not exist under root and the root's own files are used.
    """
    if proc_self_cgroup is None:
        try:
            proc_self_cgroup = Path("/proc/self/cgroup").read_text()
        except OSError:
            proc_self_cgroup = ""
    paths = parse_proc_cgroup(proc_self_cgroup)

    if (root / "cgroup.controllers").is_file():  # pure v2 tree
        dirs = _ancestors(root, paths.get("", "/"))
        return CgroupLimits(
            memory_limit_bytes=_min_limit(dirs, "memory.max"),
            memory_usage_bytes=_working_set(dirs, "memory.current", "inactive_file"),
            cpu_quota_cores=_v2_cpu(dirs),
            version=2,
        )
    memory_base = root / "memory"
    cpu_base = root / "cpu"
    if not cpu_base.is_dir() and (root / "cpu,cpuacct").is_dir():  # combined mount, no symlink
        cpu_base = root / "cpu,cpuacct"
    v1_memory = (memory_base / "memory.limit_in_bytes").is_file()
    if v1_memory or (cpu_base / "cpu.cfs_quota_us").is_file():
        mem_dirs = _ancestors(memory_base, paths.get("memory", "/"))
        cpu_dirs = _ancestors(cpu_base, paths.get("cpu", "/"))
        return CgroupLimits(
            memory_limit_bytes=_min_limit(mem_dirs, "memory.limit_in_bytes", _V1_UNLIMITED),
            memory_usage_bytes=_working_set(
                mem_dirs, "memory.usage_in_bytes", "total_inactive_file"
            ),
            cpu_quota_cores=_v1_cpu(cpu_dirs),
            version=1,
        )
    return CgroupLimits(None, None, None, None)


def effective_memory(total: int, available: int, limits: CgroupLimits) -> tuple[int, int]:
    """(total, available) after the cgroup limit: the smaller of host and cgroup figures."""
    if limits.memory_limit_bytes is None:
        return total, available
    limit = limits.memory_limit_bytes
    headroom = limit - (limits.memory_usage_bytes or 0)
    return min(total, limit), max(0, min(available, headroom))


# --- memory cgroups of our own: a device's RAM, honestly (page cache included) ---------

#: What an agent process holds besides its deployments' budgets: the interpreter, numpy,
#: onnxruntime, pyzmq and their arenas (an idle agent's RSS here is 110-130 MB).
AGENT_BASELINE_BYTES = 150 * 2**20


class CgroupError(OSError):
    """A memory cgroup could not be created, joined, read or removed (not root, no
    memory controller, or a v2 tree whose parent does not delegate `memory`)."""


def default_memory_budget(limits: CgroupLimits,
                          baseline: int = AGENT_BASELINE_BYTES) -> int | None:
    """An agent's default memory budget under a cgroup limit: the limit less what the
    process holds anyway (`baseline`); None without a limit. The cgroup also charges
    the page cache, which the window drops after each read (`window.read_block`)."""
    if limits.memory_limit_bytes is None:
        return None
    return max(0, limits.memory_limit_bytes - baseline)


def _own_memory_dir(root: Path, proc_self_cgroup: str | None) -> tuple[Path, int]:
    if proc_self_cgroup is None:
        proc_self_cgroup = Path("/proc/self/cgroup").read_text()
    paths = parse_proc_cgroup(proc_self_cgroup)
    if (root / "cgroup.controllers").is_file():
        base, rel = root, paths.get("", "/")
        version = 2
    elif (root / "memory" / "memory.limit_in_bytes").is_file():
        base, rel = root / "memory", paths.get("memory", "/")
        version = 1
    else:
        raise CgroupError(f"no memory controller under {root}")
    own = base.joinpath(*[p for p in PurePosixPath(rel or "/").parts if p != "/"])
    return (own if own.is_dir() else base), version


class MemoryCgroup:
    """A child memory cgroup of this process's own, with a hard limit that counts the
    page cache (v1 `memory.limit_in_bytes`, v2 `memory.max`). Processes joined to it
    are limited like a device with that much RAM; `remove()` once they have exited."""

    def __init__(self, name: str, limit_bytes: int, root: Path = DEFAULT_ROOT,
                 proc_self_cgroup: str | None = None) -> None:
        parent, self.version = _own_memory_dir(root, proc_self_cgroup)
        self.path = parent / name
        try:
            self.path.mkdir(exist_ok=True)
            if self.version == 1:
                (self.path / "memory.limit_in_bytes").write_text(str(limit_bytes))
                try:  # pages a joining process holds move with it, where the kernel can
                    (self.path / "memory.move_charge_at_immigrate").write_text("3")
                except OSError:
                    log.debug("%s: charges do not move with a process (kernel >= 6.x)",
                              self.path)
            else:
                (self.path / "memory.max").write_text(str(limit_bytes))
                (self.path / "memory.swap.max").write_text("0")
        except OSError as exc:
            raise CgroupError(f"cannot create memory cgroup {self.path}: {exc}") from exc
        self.limit_bytes = limit_bytes

    def join(self, pid: int) -> None:
        """Move process `pid` (and its future children) into this cgroup."""
        try:
            (self.path / "cgroup.procs").write_text(str(pid))
        except OSError as exc:
            raise CgroupError(f"cannot move process {pid} into {self.path}: {exc}") from exc

    def peak_bytes(self) -> int | None:
        """The most this cgroup was charged (page cache included), if the kernel says."""
        name = "memory.max_usage_in_bytes" if self.version == 1 else "memory.peak"
        return _read_int(self.path / name)

    def oom_kills(self) -> int:
        """Processes the kernel killed in this cgroup for memory."""
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        try:
            lines = (self.path / name).read_text().splitlines()
        except OSError:
            return 0
        for line in lines:
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value)
        return 0

    def remove(self) -> None:
        """Delete the cgroup (every process in it must have exited)."""
        try:
            self.path.rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise CgroupError(f"cannot remove {self.path}: {exc}") from exc


def memory_cgroups_available(root: Path = DEFAULT_ROOT) -> str | None:
    """None if this process can create a limited memory cgroup here, else why not."""
    try:
        probe = MemoryCgroup(f"edge-runtime-probe-{os.getpid()}", 1 << 30, root)
    except (CgroupError, OSError) as exc:
        return str(exc)
    try:
        probe.remove()
    except CgroupError as exc:
        return str(exc)
    return None
