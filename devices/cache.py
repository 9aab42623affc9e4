"""The profile cache: one JSON file per host, re-measured when a day old or on request.

Profiling costs seconds and agents start often, so a profile is reused — but a
stale one would mislead the planner after a hardware or container change, hence
the one-day limit and the check that the usable core count still matches.
A corrupt or foreign cache file is replaced by a fresh measurement, and a cache
directory that cannot be written still yields a profile (with a warning): the
cache is an optimisation, never a reason to fail.

A process confined to fewer CPUs (an emulated agent, `taskset`) is a different
device, so its profile is cached beside the host's (`<host>-<n>cpu.json`) instead
of overwriting it. Agents of a local cluster start together: an exclusive file
lock makes one measure while the others wait and then reuse its result, instead
of all measuring at once and each seeing a machine busy with the others.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

from devices import cgroup, system
from devices.errors import ProfileFormatError
from devices.measure import measure
from devices.profile import DeviceProfile

log = logging.getLogger(__name__)

#: A cached profile older than this (seconds) is re-measured.
MAX_AGE_S = 24 * 3600.0
ENV_CACHE_DIR = "EDGE_RUNTIME_CACHE_DIR"


def default_cache_dir() -> Path:
    """$EDGE_RUNTIME_CACHE_DIR/profiles, else ~/.cache/edge-runtime/profiles."""
    base = os.environ.get(ENV_CACHE_DIR)
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "edge-runtime"
    return root / "profiles"


def cache_path(cache_dir: Path, host: str, cores: int | None = None) -> Path:
    """<host>.json, or <host>-<cores>cpu.json for a process confined to fewer CPUs."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", host) or "localhost"
    if cores is not None and cores != (os.cpu_count() or cores):
        return cache_dir / f"{safe}-{cores}cpu.json"
    return cache_dir / f"{safe}.json"


@contextlib.contextmanager
def _measuring_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on <path>.lock while measuring (none if it cannot be made).

    No timeout: the holder finishes a measurement within seconds, and the kernel
    drops the lock if it dies.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path.with_suffix(".lock"), "a")  # noqa: SIM115 (held across the yield)
    except OSError:
        yield
        return
    with handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def load_cached(path: Path, host: str, now: float | None = None) -> DeviceProfile | None:
    """The cached profile if it is readable, this host's, fresh and matches the cores."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        log.warning("cannot read profile cache %s (%s); measuring again", path, error)
        return None
    try:
        cached = DeviceProfile.from_json(text)
    except ProfileFormatError as error:
        log.warning("profile cache %s is corrupt (%s); measuring again", path, error)
        return None
    age = (time.time() if now is None else now) - cached.measured_at
    if cached.name != host or cached.source != "measured":
        log.warning(
            "profile cache %s describes %r, not %r; measuring again", path, cached.name, host
        )
        return None
    if not 0 <= age <= MAX_AGE_S:
        log.info("cached profile is %.0f s old; measuring again", age)
        return None
    if cached.cores != system.usable_cores(cgroup.read_limits()):
        log.info("usable cores changed since the cached profile; measuring again")
        return None
    return cached


def save(path: Path, found: DeviceProfile) -> bool:
    """Write atomically; False (and a warning) if the directory is not writable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(found.to_json())
        os.replace(tmp, path)
    except OSError as error:
        log.warning(
            "cannot write the profile cache %s (%s); the profile is not cached — "
            "set %s to a writable directory",
            path,
            error,
            ENV_CACHE_DIR,
        )
        return False
    return True


def profile(refresh: bool = False, cache_dir: Path | None = None) -> DeviceProfile:
    """This device's profile: cached if fresh, else measured now and cached."""
    directory = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
    host = system.host_name()
    path = cache_path(directory, host, system.usable_cores(cgroup.read_limits()))
    if not refresh:
        cached = load_cached(path, host)
        if cached is not None:
            log.debug("using cached profile %s", path)
            return cached
    with _measuring_lock(path):
        if not refresh:  # another process may have measured while we waited for the lock
            cached = load_cached(path, host)
            if cached is not None:
                return cached
        found = measure(directory, name=host)
        save(path, found)
    return found
