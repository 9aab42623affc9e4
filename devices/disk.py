"""Sequential read bandwidth of the cache directory, bypassing the page cache.

The sliding weight window streams layers from this directory, so its cold read
speed bounds how fast a device can serve a share larger than its RAM. A read
served from the page cache would report memory speed instead, hence:

1. O_DIRECT with an mmap-allocated (page-aligned) buffer and block-aligned reads;
2. if the filesystem refuses O_DIRECT (tmpfs, some overlay and network mounts),
   fdatasync + posix_fadvise(DONTNEED) to evict the file's pages, then plain reads.

The method used is returned and recorded in the profile (`disk_read_method`).
The probe file is written once per cache directory and reused, so a slow SD card
pays the write only on the first profile.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

PROBE_NAME = "disk-probe.bin"
#: Probe file size: enough to get past a drive's own cache on small devices.
PROBE_BYTES = 32 * 1024 * 1024
#: Read size; a multiple of every logical block size (512 B / 4 KiB) O_DIRECT demands.
CHUNK_BYTES = 4 * 1024 * 1024
#: Stop reading after this long even if the file is not done (an SD card reads ~45 MB/s).
READ_BUDGET_S = 0.35


def _ensure_probe(path: Path, size: int) -> None:
    if path.is_file() and path.stat().st_size == size:
        return
    tmp = path.with_suffix(".tmp")
    block = os.urandom(1024 * 1024)  # incompressible, so a compressing filesystem cannot cheat
    with open(tmp, "wb") as handle:
        for _ in range(size // len(block)):
            handle.write(block)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _read_all(fd: int, budget_s: float) -> tuple[int, float]:
    """(bytes, seconds) of sequential reads from `fd` until its end or `budget_s`."""
    # An anonymous mmap is page-aligned, as O_DIRECT needs; plain reads do not mind.
    with mmap.mmap(-1, CHUNK_BYTES) as buffer:
        total = 0
        start = time.perf_counter()
        while True:
            count = os.readv(fd, [buffer])
            total += count
            elapsed = time.perf_counter() - start
            if count < len(buffer) or elapsed > budget_s:
                return total, elapsed


def _read_direct(path: Path, budget_s: float) -> tuple[int, float]:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        return _read_all(fd, budget_s)
    finally:
        os.close(fd)


def _read_fadvise(path: Path, budget_s: float) -> tuple[int, float]:
    fd = os.open(path, os.O_RDWR)
    try:
        os.fdatasync(fd)  # only clean pages can be dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return _read_all(fd, budget_s)
    finally:
        os.close(fd)


def disk_read_gbps(
    directory: Path,
    *,
    method: str = "auto",
    size: int = PROBE_BYTES,
    budget_s: float = READ_BUDGET_S,
) -> tuple[float, str]:
    """(GB/s, method) of a cold sequential read in `directory`.

    `method` is "auto" (O_DIRECT, else fadvise), "O_DIRECT" or "fadvise".
    Returns (0.0, "unmeasured") if the directory cannot hold the probe file: the
    profile is still useful and the log says why.
    """
    if size % CHUNK_BYTES:
        raise ValueError(f"probe size must be a multiple of {CHUNK_BYTES} bytes")
    path = directory / PROBE_NAME
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _ensure_probe(path, size)
    except OSError as error:
        log.warning("cannot write a disk probe in %s (%s); disk not measured", directory, error)
        return 0.0, "unmeasured"
    use_direct = method in ("auto", "O_DIRECT") and hasattr(os, "O_DIRECT")
    if use_direct:
        try:
            nbytes, elapsed = _read_direct(path, budget_s)
            return nbytes / max(elapsed, 1e-9) / 1e9, "O_DIRECT"
        except OSError as error:
            if method == "O_DIRECT" or error.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise
            log.info("O_DIRECT refused in %s (%s); using posix_fadvise", directory, error)
    nbytes, elapsed = _read_fadvise(path, budget_s)
    return nbytes / max(elapsed, 1e-9) / 1e9, "fadvise"
