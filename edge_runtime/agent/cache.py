"""The content-addressed shard cache on the agent's disk.

Shards are stored as `<cache>/shards/<sha256><ext>`: the name is the digest of
the bytes, so a redeploy of the same shard (even after an agent restart, even
for another deployment) transfers nothing. Uploads arrive in chunks into
`<cache>/partial/` and are renamed into place only after their digest is
verified; a shard is verified again before it is loaded, so a file changed on
disk after upload is refused, never executed.

Incomplete uploads are bounded (`UploadQuota`, shared with the LLM checkpoint inbox):
anyone who may deploy could otherwise fill the disk by starting uploads to made-up
digests and never finishing them. Their total is capped, an upload whose declared size
does not fit is refused before a byte is kept, and uploads idle for
`AgentTimeouts.partial_upload_ttl_s` (by file mtime, so it holds across restarts) are deleted.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
from pathlib import Path

from edge_runtime.agent.config import AgentTimeouts
from edge_runtime.errors import DeployError, ShardIntegrityError, UploadQuotaError
from partitioner.plan import sha256_file

log = logging.getLogger(__name__)

_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_EXTENSIONS = frozenset({".onnx", ".tflite"})

# Most bytes of incomplete uploads an agent holds at once (ONNX shards and LLM checkpoint
# files together). A checkpoint is incomplete until its last file arrives, so this must
# hold the largest checkpoint an edge device serves: 8 GiB is a 2B-parameter model in
# bf16 (a 2 GiB cap would refuse a 1.5B one). Never more than PARTIAL_DISK_FRACTION of
# the disk the uploads could still use, so they cannot fill it.
PARTIAL_QUOTA_BYTES = 8 * 2**30
PARTIAL_DISK_FRACTION = 0.5


def _check_key(sha256: str, ext: str) -> None:
    if not _DIGEST.match(sha256):
        raise DeployError(f"shard digest {sha256!r} is not a lowercase hex sha256")
    if ext not in _EXTENSIONS:
        raise DeployError(f"shard type {ext!r} is not accepted; use one of {sorted(_EXTENSIONS)}")


def _entry_bytes_and_mtime(entry: Path) -> tuple[int, float]:
    """Bytes under an upload entry (a file, or a directory of files) and its newest mtime."""
    try:
        st = entry.stat()
    except OSError:
        return 0, 0.0
    if not entry.is_dir():
        return st.st_size, st.st_mtime
    size, newest = 0, st.st_mtime
    for child in entry.iterdir():
        child_size, child_mtime = _entry_bytes_and_mtime(child)
        size, newest = size + child_size, max(newest, child_mtime)
    return size, newest


class UploadQuota:
    """The disk held by incomplete uploads of one agent, across its upload directories.

    Each watched directory holds one entry per upload in progress (a `.part` file of a
    shard, or a directory of a checkpoint's files). `admit` refuses an upload whose
    declared size does not fit beside the others; `sweep` deletes entries idle for
    longer than the TTL. Thread-safe (uploads arrive on the control loop, sweeps may not).
    """

    def __init__(self, limit_bytes: int = PARTIAL_QUOTA_BYTES,
                 ttl_s: float = AgentTimeouts.partial_upload_ttl_s) -> None:
        self.limit_bytes = limit_bytes
        self.ttl_s = ttl_s
        self._dirs: list[Path] = []
        self._lock = threading.Lock()

    def watch(self, directory: Path) -> None:
        """Count (and expire) the uploads in `directory` from now on."""
        with self._lock:
            if directory not in self._dirs:
                self._dirs.append(directory)

    def _entries(self) -> list[Path]:
        with self._lock:
            dirs = list(self._dirs)
        return [e for d in dirs if d.is_dir() for e in d.iterdir()]

    def admit(self, entry: Path, declared: int) -> None:
        """Refuse (`UploadQuotaError`, with `entry` deleted) an upload of `declared` bytes
        that, with every other incomplete upload, would exceed the quota."""
        others = sum(_entry_bytes_and_mtime(e)[0] for e in self._entries() if e != entry)
        own = _entry_bytes_and_mtime(entry)[0]
        cap = min(self.limit_bytes,
                  int((_free_bytes(entry) + own + others) * PARTIAL_DISK_FRACTION))
        if others + declared <= cap:
            return
        _remove(entry)
        if declared > cap:
            raise UploadQuotaError(
                f"an upload of {declared} bytes exceeds this agent's limit for incomplete "
                f"uploads ({cap} bytes: the smaller of {self.limit_bytes} and "
                f"{PARTIAL_DISK_FRACTION:.0%} of the disk it may use); free disk space on "
                "the agent or deploy a smaller model")
        raise UploadQuotaError(
            f"the agent already holds {others} bytes of incomplete uploads; {declared} more "
            f"would exceed its limit of {cap}; retry once they finish or expire "
            f"({self.ttl_s:.0f} s after their last chunk)")

    def sweep(self) -> None:
        """Delete uploads whose last chunk arrived more than `ttl_s` ago."""
        now = time.time()
        for entry in self._entries():
            size, newest = _entry_bytes_and_mtime(entry)
            if now - newest > self.ttl_s:
                log.info("deleting incomplete upload %s (%d bytes, idle %.0f s)", entry, size,
                         now - newest)
                _remove(entry)


def _free_bytes(path: Path) -> int:
    """Free bytes on the filesystem that holds (or will hold) `path`."""
    for parent in (path, *path.parents):
        if parent.exists():
            try:
                return shutil.disk_usage(parent).free
            except OSError:
                return 0
    return 0


def _remove(entry: Path) -> None:
    if entry.is_dir():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)


class ShardCache:
    """Verified shard files by sha256, plus the uploads in progress."""

    def __init__(self, root: Path, uploads: UploadQuota | None = None) -> None:
        """`uploads`: the quota of incomplete uploads (default `UploadQuota()`)."""
        self.root = root
        self.shards = root / "shards"
        self.partial = root / "partial"
        self.shards.mkdir(parents=True, exist_ok=True)
        self.partial.mkdir(parents=True, exist_ok=True)
        self.uploads = uploads or UploadQuota()
        self.uploads.watch(self.partial)
        self.uploads.sweep()  # uploads left by a previous run of the agent

    def path_for(self, sha256: str, ext: str) -> Path:
        _check_key(sha256, ext)
        return self.shards / f"{sha256}{ext}"

    def has(self, sha256: str, ext: str) -> bool:
        return self.path_for(sha256, ext).is_file()

    def missing(self, wanted: list[tuple[str, str]]) -> list[str]:
        """Digests of `(sha256, ext)` pairs not in the cache."""
        return [sha for sha, ext in wanted if not self.has(sha, ext)]

    def put_chunk(self, sha256: str, ext: str, offset: int, total: int, data: bytes) -> bool:
        """Write one chunk; on the last one verify and publish. True once the shard is complete.

        Chunks must arrive in order (the SDK sends them so); an out-of-order
        chunk restarts nothing silently but is refused with `DeployError`.
        """
        final = self.path_for(sha256, ext)
        if final.is_file():
            return True
        if total < 0:
            raise DeployError(f"shard {sha256[:12]} declares a negative size {total}")
        part = self.partial / f"{sha256}{ext}.part"
        if offset == 0:
            part.unlink(missing_ok=True)
            self.uploads.sweep()
        self.uploads.admit(part, total)
        size = part.stat().st_size if part.exists() else 0
        if offset != size:
            raise DeployError(
                f"chunk of shard {sha256[:12]} at offset {offset} but {size} bytes received so "
                "far; redeploy to restart the transfer"
            )
        if offset + len(data) > total:
            raise DeployError(f"chunk of shard {sha256[:12]} runs past its total size {total}")
        with part.open("ab") as handle:
            handle.write(data)
        if offset + len(data) < total:
            return False
        actual = sha256_file(part)
        if actual != sha256:
            part.unlink()
            raise ShardIntegrityError(
                f"shard received with sha256 {actual[:12]}… but announced as {sha256[:12]}…; it "
                "was corrupted or tampered with in transit — check the network and redeploy"
            )
        os.replace(part, final)
        log.info("shard %s… stored (%d bytes)", sha256[:12], total)
        return True

    def verified_path(self, sha256: str, ext: str) -> Path:
        """The cached file, after checking its bytes still hash to `sha256`."""
        path = self.path_for(sha256, ext)
        if not path.is_file():
            raise DeployError(
                f"shard {sha256[:12]}… is not on this agent; send it before deploying"
            )
        actual = sha256_file(path)
        if actual != sha256:
            path.unlink()  # never run it, and let the next deploy send it again
            raise ShardIntegrityError(
                f"shard {sha256[:12]}… on disk hashes to {actual[:12]}…: it was changed after "
                "upload; the agent removed it — redeploy to send it again"
            )
        return path
