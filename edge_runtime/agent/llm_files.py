"""Where an agent reads an LLM checkpoint from: a directory its own configuration allows,
or files received into its cache (real devices; local clusters by default).

Why an allow-list (`--allow-checkpoint-dir`): the deploy spec names a path, and anyone
who may deploy must not make the agent read whatever that path holds (`/etc`, another
user's files). A path outside the allowed directories (resolved, symlinks followed;
relative paths and `..` refused) is never read: the agent asks for the files instead.

Why a cache keyed by the checkpoint digest: the digest (`llm.content_digest`: the sha256
of every file's bytes) names the weights, so a redeploy, or a restarted agent, finds the
files and receives nothing. Files arrive in acknowledged 1 MiB chunks (`llm_put`), in
order, into an upload directory of the deployment's own (`CheckpointInbox` says why),
counted against the agent's `UploadQuota`; each file is
checked against the sha256 the coordinator announced, and once all are there the set
must hash to the announced checkpoint digest before it is moved into place
(`<root>/<digest>/`), so a corrupted transfer or a checkpoint that is not the one
announced is refused (`ShardIntegrityError`) with nothing kept, never converted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from edge_runtime.agent.cache import ShardCache
from edge_runtime.errors import DeployError, ShardIntegrityError
from edge_runtime.llm.checkpoint import FileHashes, content_digest

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
# Files of a checkpoint the agent needs: the config, the weights, the shard index.
ACCEPTED_SUFFIXES = (".json", ".safetensors")


def _check_name(name: str) -> None:
    if not _NAME.match(name) or not name.endswith(ACCEPTED_SUFFIXES):
        raise DeployError(f"checkpoint file name {name!r} is not accepted: plain names ending "
                          f"in {', '.join(ACCEPTED_SUFFIXES)} only")


def allowed_checkpoint(path: str, allowed: Sequence[Path]) -> Path | None:
    """The resolved directory `path` names when it lies inside one of `allowed` (the
    agent's `--allow-checkpoint-dir`s), else None: the agent then asks for the files."""
    if not path or not allowed:
        return None
    given = Path(path)
    if not given.is_absolute() or ".." in given.parts:
        return None
    resolved = given.resolve()
    for directory in allowed:
        root = directory.resolve()
        if resolved.is_relative_to(root) and resolved.is_dir():
            return resolved
    return None


class _Verified(NamedTuple):
    """A received file's sha256 and the identity of the inode it was computed from."""

    sha256: str
    identity: tuple[int, int, int]  # (inode, mtime_ns, size)


def _identity(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_ino, st.st_mtime_ns, st.st_size


def _hash(path: Path) -> _Verified:
    """The sha256 of `path` with the identity of the very inode read; refused if it changed
    while being read (then the digest would describe no version of the file)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        before = _identity(os.fstat(handle.fileno()))
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
        after = _identity(os.fstat(handle.fileno()))
    if before != after:
        raise ShardIntegrityError(f"checkpoint file {path.name} changed while it was verified; "
                                  "redeploy")
    return _Verified(digest.hexdigest(), before)


class CheckpointInbox:
    """The checkpoint directory `<root>/<digest>/`, published once every file arrived and
    the set matched the digest. `cache`: the agent's shard cache, whose upload directory
    and quota the files in transit share. `hashes`: where the sha256 of each published file
    is remembered, so loading it does not hash it again.

    Why each inbox has a directory of its own (`partial/llm-<digest>-<random token>`):
    several deployments of one digest may be receiving at once, from coordinators that are
    trusted but not necessarily honest. Sharing one directory let one of them overwrite a
    file another had verified, which was then published (and its hash remembered) under a
    digest it does not hash to. Now nobody else writes where this inbox writes, and what is
    published is checked again: a file whose inode, mtime or size differ from the ones it
    was verified with is hashed again, and the set is moved into place with one rename.
    Files received by an earlier deployment are not reused: a redeploy sends them again."""

    def __init__(self, root: Path, digest: str, files: list[tuple[str, int]],
                 cache: ShardCache, hashes: FileHashes | None = None) -> None:
        if not _DIGEST.match(digest):
            raise DeployError(f"checkpoint digest {digest!r} is not a lowercase hex sha256")
        for name, size in files:
            _check_name(name)
            if size < 0:
                raise DeployError(f"checkpoint file {name} has a negative size")
        if len(dict(files)) != len(files):
            raise DeployError("the checkpoint's file list names a file twice")
        self.digest = digest
        self.directory = root / digest
        self.partial = cache.partial / f"llm-{digest}-{secrets.token_hex(8)}"
        self._uploads = cache.uploads
        self._hashes = hashes or FileHashes.at(root / "file-hashes.json")
        self.files = dict(files)
        self._verified: dict[str, _Verified] = {}
        self._lock = threading.Lock()  # puts (control loop) against close (a loader thread)
        self._closed = False
        if not self.complete:  # refused at deploy, before a byte is sent
            self._uploads.admit(self.partial, sum(self.files.values()))

    @property
    def complete(self) -> bool:
        """True once the verified checkpoint is in place."""
        return self.directory.is_dir()

    def missing(self) -> list[str]:
        """Files not received (and verified) yet, in the order they were listed."""
        if self.complete:
            return []
        return [name for name in self.files if name not in self._verified]

    def put(self, name: str, offset: int, data: bytes, sha256: str) -> bool:
        """Append one chunk; True once file `name` is complete and verified."""
        if name not in self.files:
            raise DeployError(f"{name!r} is not a file of this checkpoint")
        with self._lock:
            if self._closed:
                raise DeployError("this deployment is closed; its checkpoint upload ended")
            if self.complete:  # published, maybe by another deployment: drop our copy
                shutil.rmtree(self.partial, ignore_errors=True)
                return True
            if name in self._verified:
                return True
            return self._append(name, offset, data, sha256)

    def _append(self, name: str, offset: int, data: bytes, sha256: str) -> bool:
        total = self.files[name]
        if offset == 0:
            self._uploads.sweep()
        self._uploads.admit(self.partial, sum(self.files.values()))
        self.partial.mkdir(parents=True, exist_ok=True)
        part = self.partial / f"{name}.part"
        size = part.stat().st_size if part.exists() else 0
        if offset == 0 and size:
            part.unlink()
            size = 0
        if offset != size:
            raise DeployError(f"chunk of {name} at offset {offset} but {size} bytes received so "
                              "far; redeploy to restart the transfer")
        if offset + len(data) > total:
            raise DeployError(f"chunk of {name} runs past its size {total}")
        with part.open("ab") as handle:
            handle.write(data)
        if offset + len(data) < total:
            return False
        verified = _hash(part)
        if verified.sha256 != sha256:
            part.unlink()
            raise ShardIntegrityError(
                f"checkpoint file {name} arrived with sha256 {verified.sha256[:12]}… but was "
                f"announced as {sha256[:12]}…; it was corrupted in transit — redeploy")
        os.replace(part, self.partial / name)  # a rename keeps the inode and mtime
        self._verified[name] = verified
        log.info("checkpoint file %s received (%d bytes)", name, total)
        if not self.missing():
            try:
                self._publish()
            finally:
                self._verified.clear()  # published, or refused with nothing kept
        return True

    def _current(self, directory: Path) -> dict[str, _Verified]:
        """The sha256 of each file in `directory`: the one verified on arrival while the
        file is the very inode it was computed from, else hashed now."""
        current = {}
        for name in self.files:
            path = directory / name
            verified = self._verified[name]
            if _identity(path.stat()) != verified.identity:
                verified = _hash(path)
            current[name] = verified
        return current

    def _refuse(self, actual: str) -> ShardIntegrityError:
        return ShardIntegrityError(
            f"the checkpoint files sent hash to {actual[:12]}…, not to the announced "
            f"checkpoint digest {self.digest[:12]}…; refused and deleted (a coordinator "
            "sent other weights than it named) — redeploy from an unmodified checkpoint")

    def _publish(self) -> None:
        """Check the whole set against the digest; move it into place with one rename, check
        that what was moved is what was hashed, and only then remember those hashes."""
        try:
            shas = self._current(self.partial)
        except OSError as error:  # expired and swept meanwhile
            shutil.rmtree(self.partial, ignore_errors=True)
            raise DeployError(f"the checkpoint's received files are gone ({error}); "
                              "redeploy to send them again") from error
        actual = content_digest((name, v.sha256) for name, v in shas.items())
        if actual != self.digest:
            shutil.rmtree(self.partial, ignore_errors=True)
            raise self._refuse(actual)
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(self.partial, self.directory)  # fails if it exists and is not empty
        except OSError:
            shutil.rmtree(self.partial, ignore_errors=True)
            if self.complete:  # published meanwhile by another deployment of this digest
                return
            raise
        try:
            moved = {name: _identity((self.directory / name).stat()) for name in self.files}
        except OSError:
            moved = {}
        if moved != {name: v.identity for name, v in shas.items()}:
            self.discard()  # changed between the hash and the rename: never load it
            raise ShardIntegrityError(
                f"checkpoint {self.digest[:12]}… changed on disk while it was published; it "
                "was deleted — redeploy")
        for name, verified in shas.items():
            self._hashes.remember(self.directory / name, verified.sha256)
        log.info("checkpoint %s… verified and stored (%d files)", self.digest[:12],
                 len(self.files))

    def close(self) -> None:
        """Delete the files received so far (the deployment ended): they count against the
        upload quota, and no other deployment uses them."""
        with self._lock:
            self._closed = True
            shutil.rmtree(self.partial, ignore_errors=True)

    def discard(self) -> None:
        """Delete the published copy (its bytes changed on disk): the next deploy sends it."""
        shutil.rmtree(self.directory, ignore_errors=True)


__all__ = ["ACCEPTED_SUFFIXES", "CheckpointInbox", "allowed_checkpoint"]
