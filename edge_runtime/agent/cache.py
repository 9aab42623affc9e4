"""The content-addressed shard cache on the agent's disk.

Shards are stored as `<cache>/shards/<sha256><ext>`: the name is the digest of
the bytes, so a redeploy of the same shard (even after an agent restart, even
for another deployment) transfers nothing. Uploads arrive in chunks into
`<cache>/partial/` and are renamed into place only after their digest is
verified; a shard is verified again before it is loaded, so a file changed on
disk after upload is refused, never executed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from pathlib import Path

from edge_runtime.agent.config import PARTIAL_UPLOAD_TTL_S
from edge_runtime.errors import DeployError, ShardIntegrityError

log = logging.getLogger(__name__)

_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_EXTENSIONS = frozenset({".onnx", ".tflite"})


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_key(sha256: str, ext: str) -> None:
    if not _DIGEST.match(sha256):
        raise DeployError(f"shard digest {sha256!r} is not a lowercase hex sha256")
    if ext not in _EXTENSIONS:
        raise DeployError(f"shard type {ext!r} is not accepted; use one of {sorted(_EXTENSIONS)}")


class ShardCache:
    """Verified shard files by sha256, plus the uploads in progress."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.shards = root / "shards"
        self.partial = root / "partial"
        self.shards.mkdir(parents=True, exist_ok=True)
        self.partial.mkdir(parents=True, exist_ok=True)
        self._touched: dict[str, float] = {}

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
        self._expire_partials()
        part = self.partial / f"{sha256}{ext}.part"
        size = part.stat().st_size if part.exists() else 0
        if offset == 0 and size:
            part.unlink()
            size = 0
        if offset != size:
            raise DeployError(
                f"chunk of shard {sha256[:12]} at offset {offset} but {size} bytes received so "
                "far; redeploy to restart the transfer"
            )
        if offset + len(data) > total:
            raise DeployError(f"chunk of shard {sha256[:12]} runs past its total size {total}")
        with part.open("ab") as handle:
            handle.write(data)
        self._touched[part.name] = time.monotonic()
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
        self._touched.pop(part.name, None)
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

    def _expire_partials(self) -> None:
        now = time.monotonic()
        for name, touched in list(self._touched.items()):
            if now - touched > PARTIAL_UPLOAD_TTL_S:
                (self.partial / name).unlink(missing_ok=True)
                del self._touched[name]
