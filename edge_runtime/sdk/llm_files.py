"""Sending an LLM checkpoint's files to agents that cannot read the coordinator's copy.

An agent's deploy reply lists the files its cache lacks (`status.missing`); only
those are sent, in acknowledged `CHUNK_BYTES` chunks (so a transfer never holds a
whole file in one message and progress can be shown), each file announced with its
sha256, which the agent checks on arrival (progress: `ProgressEvent`s, bytes done, rate
and time left per agent); the agent then checks that the whole set
hashes to the checkpoint digest of the spec (`llm.content_digest`) before it converts
anything. Hashes come from the same identity-keyed cache that computed the digest
(`llm.FileHashes`), so a file is read for hashing once, not once per deploy.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge_runtime.errors import DeployError
from edge_runtime.llm.checkpoint import Checkpoint, FileHashes
from edge_runtime.protocol import LlmPut, LlmPutReply
from edge_runtime.sdk.config import CHUNK_BYTES
from edge_runtime.sdk.progress import AnyProgress, ProgressMeter, as_callback

if TYPE_CHECKING:
    from edge_runtime.sdk.agents import Agents as Cluster

log = logging.getLogger(__name__)

Progress = AnyProgress
"""A callback of `ProgressEvent`s (or, the earlier form, of (agent, done, total))."""

SEND_TASK = "sending checkpoint files"


def checkpoint_files(directory: Path) -> list[tuple[str, int]]:
    """(name, size) of the files an agent needs: config, shard index, the weights the
    checkpoint reads — exactly the files its digest covers (`Checkpoint.files`)."""
    return [(path.name, path.stat().st_size) for path in Checkpoint(directory).files]


class FileSender:
    """Sends missing checkpoint files to agents; counts the bytes sent."""

    def __init__(self, cluster: Cluster, directory: Path,
                 progress: Progress | None = None) -> None:
        self._cluster = cluster
        self._directory = directory
        self._progress = as_callback(progress)
        self.bytes_sent = 0

    def _sha256(self, name: str) -> str:
        return FileHashes.at().sha256(self._directory / name)

    def send(self, agent: str, deployment_id: str, missing: Sequence[str]) -> None:
        sizes = {name: (self._directory / name).stat().st_size for name in missing}
        total = sum(sizes.values())
        meter = ProgressMeter(SEND_TASK, total, self._progress, agent=agent)
        log.info("sending %d checkpoint file(s), %.1f MB, to %s", len(missing), total / 1e6,
                 agent)
        for name in missing:
            sha256 = self._sha256(name)
            size = sizes[name]
            complete = False
            with (self._directory / name).open("rb") as handle:
                offset = 0
                while offset < size or (size == 0 and not complete):
                    chunk = handle.read(CHUNK_BYTES)
                    reply = self._cluster.call(
                        agent, LlmPut(deployment_id, name, offset, sha256), LlmPutReply,
                        {"data": np.frombuffer(chunk, dtype=np.uint8)},
                        timeout_s=self._cluster.timeouts.chunk_s)
                    offset += len(chunk)
                    self.bytes_sent += len(chunk)
                    complete = reply.complete
                    meter.advance(len(chunk))
                    if size == 0:
                        break
            if not complete:
                raise DeployError(f"agent {agent} did not confirm {name} complete; redeploy")


__all__ = ["SEND_TASK", "FileSender", "Progress", "checkpoint_files"]
