"""Where an agent reads an LLM checkpoint from: a directory its own configuration allows,
or files received into its cache (real devices; local clusters by default).

Why an allow-list (`--allow-checkpoint-dir`): the deploy spec names a path, and anyone
who may deploy must not make the agent read whatever that path holds (`/etc`, another
user's files). A path outside the allowed directories (resolved, symlinks followed;
relative paths and `..` refused) is never read: the agent asks for the files instead.

Why a cache keyed by the checkpoint digest: the digest (`llm.content_digest`: the sha256
of every file's bytes) names the weights, so a redeploy, or a restarted agent, finds the
files and receives nothing. Files arrive in acknowledged 1 MiB chunks (`llm_put`), in
order, into an upload directory counted against the agent's `UploadQuota`; each file is
checked against the sha256 the coordinator announced, and once all are there the set
must hash to the announced checkpoint digest before it is moved into place
(`<root>/<digest>/`), so a corrupted transfer or a checkpoint that is not the one
announced is refused (`ShardIntegrityError`) with nothing kept, never converted.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from edge_runtime.agent.cache import ShardCache, UploadQuota, sha256_file
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


class CheckpointInbox:
    """The checkpoint directory `<root>/<digest>/`, published once every file arrived and
    the set matched the digest. `cache`: the agent's shard cache, whose upload directory
    and quota the files in transit share (default: `<root>/partial`, a quota of its own).
    `hashes`: where the sha256 of each published file is remembered, so loading it does
    not hash it again."""

    def __init__(self, root: Path, digest: str, files: list[tuple[str, int]],
                 cache: ShardCache | None = None, hashes: FileHashes | None = None) -> None:
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
        if cache is None:
            self.partial, self._uploads = root / "partial" / digest, UploadQuota()
        else:
            self.partial, self._uploads = cache.partial / f"llm-{digest}", cache.uploads
        self._uploads.watch(self.partial.parent)
        self._hashes = hashes or FileHashes.at(root / "file-hashes.json")
        self.files = dict(files)
        self._verified: dict[str, str] = {}
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
        return [name for name, size in self.files.items()
                if not ((self.partial / name).is_file()
                        and (self.partial / name).stat().st_size == size)]

    def put(self, name: str, offset: int, data: bytes, sha256: str) -> bool:
        """Append one chunk; True once file `name` is complete and verified."""
        if name not in self.files:
            raise DeployError(f"{name!r} is not a file of this checkpoint")
        if self.complete:
            return True
        total = self.files[name]
        done = self.partial / name
        if done.is_file() and done.stat().st_size == total:
            return True
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
        actual = sha256_file(part)
        if actual != sha256:
            part.unlink()
            raise ShardIntegrityError(
                f"checkpoint file {name} arrived with sha256 {actual[:12]}… but was "
                f"announced as {sha256[:12]}…; it was corrupted in transit — redeploy")
        os.replace(part, done)
        self._verified[name] = actual
        log.info("checkpoint file %s received (%d bytes)", name, total)
        if not self.missing():
            self._publish()
        return True

    def _publish(self) -> None:
        """Check the whole set against the digest; move it into place or delete it."""
        shas = {name: self._verified.get(name) or sha256_file(self.partial / name)
                for name in self.files}
        actual = content_digest(shas.items())
        if actual != self.digest:
            shutil.rmtree(self.partial, ignore_errors=True)
            raise ShardIntegrityError(
                f"the checkpoint files sent hash to {actual[:12]}…, not to the announced "
                f"checkpoint digest {self.digest[:12]}…; refused and deleted (a coordinator "
                "sent other weights than it named) — redeploy from an unmodified checkpoint")
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(self.partial, self.directory)
        except OSError:
            shutil.rmtree(self.partial, ignore_errors=True)
            if self.complete:  # published meanwhile by another deployment of this digest
                return
            raise
        for name, sha256 in shas.items():
            self._hashes.remember(self.directory / name, sha256)
        log.info("checkpoint %s… verified and stored (%d files)", self.digest[:12],
                 len(self.files))

    def discard(self) -> None:
        """Delete the published copy (its bytes changed on disk): the next deploy sends it."""
        shutil.rmtree(self.directory, ignore_errors=True)


__all__ = ["ACCEPTED_SUFFIXES", "CheckpointInbox", "allowed_checkpoint"]
