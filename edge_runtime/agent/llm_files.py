"""Receiving an LLM checkpoint's files into the agent's cache, for agents that cannot
read the coordinator's checkpoint directory (real devices, not a local cluster).

Why a cache keyed by the checkpoint digest: the digest (config + every safetensors
header + file sizes, `llm.Checkpoint.digest`) names the weights, so a redeploy, or a
restarted agent, finds the files and receives nothing. Files arrive in acknowledged
1 MiB chunks (`llm_put`), in order, into `partial/`; the last chunk is checked
against the sha256 the coordinator announced before the file is renamed into place,
so a corrupted transfer is refused (`ShardIntegrityError`), never converted.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from edge_runtime.agent.cache import sha256_file
from edge_runtime.errors import DeployError, ShardIntegrityError

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
# Files of a checkpoint the agent needs: the config, the weights, the shard index.
ACCEPTED_SUFFIXES = (".json", ".safetensors")


def _check_name(name: str) -> None:
    if not _NAME.match(name) or not name.endswith(ACCEPTED_SUFFIXES):
        raise DeployError(f"checkpoint file name {name!r} is not accepted: plain names ending "
                          f"in {', '.join(ACCEPTED_SUFFIXES)} only")


class CheckpointInbox:
    """The checkpoint directory `<root>/<digest>/` as files arrive into it."""

    def __init__(self, root: Path, digest: str, files: list[tuple[str, int]]) -> None:
        if not _DIGEST.match(digest):
            raise DeployError(f"checkpoint digest {digest!r} is not a lowercase hex sha256")
        for name, size in files:
            _check_name(name)
            if size < 0:
                raise DeployError(f"checkpoint file {name} has a negative size")
        self.directory = root / digest
        self.partial = root / "partial" / digest
        self.files = dict(files)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.partial.mkdir(parents=True, exist_ok=True)

    def missing(self) -> list[str]:
        """Files not (completely) here yet, in the order they were listed."""
        return [name for name, size in self.files.items()
                if not ((self.directory / name).is_file()
                        and (self.directory / name).stat().st_size == size)]

    @property
    def complete(self) -> bool:
        return not self.missing()

    def put(self, name: str, offset: int, data: bytes, sha256: str) -> bool:
        """Append one chunk; True once file `name` is complete and verified."""
        if name not in self.files:
            raise DeployError(f"{name!r} is not a file of this checkpoint")
        total = self.files[name]
        final = self.directory / name
        if final.is_file() and final.stat().st_size == total:
            return True
        part = self.partial / name
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
        os.replace(part, final)
        log.info("checkpoint file %s stored (%d bytes)", name, total)
        return True


__all__ = ["ACCEPTED_SUFFIXES", "CheckpointInbox"]
