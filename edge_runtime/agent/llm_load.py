"""Where an llm-shard's weights come from, up to a built worker.

Why apart from `llm_shard.py`: the share's lifecycle (jobs, steps, status) does not
depend on how its weights arrive. This module decides where the checkpoint is read
(in place under an allowed directory, or from files the coordinator sends into the
agent's cache), checks it against the deployment's digest (every byte), converts the
share once into the cache (`llm.slices.convert_share`) and builds the `TensorWorker`
with the window its budget allows. Pipeline stages (`llm_stage.py`) use the same path.
"""

from __future__ import annotations

import dataclasses
import gc
from pathlib import Path
from typing import TYPE_CHECKING

from edge_runtime.agent.deployments import AgentContext
from edge_runtime.agent.llm_files import CheckpointInbox, allowed_checkpoint
from edge_runtime.agent.llm_status import LoadProgress
from edge_runtime.errors import CheckpointError, DeployError, ShardIntegrityError
from edge_runtime.llm.checkpoint import FileHashes
from edge_runtime.protocol import ShardSpec

if TYPE_CHECKING:
    from edge_runtime.llm.worker import TensorWorker
    from partitioner.tensor import TensorShare

# Sub-directory of the agent's cache holding converted shares (one per digest+share).
CACHE_SUBDIR = "llm"
# Task names in the status map's progress list (the CLI's progress line shows them).
CONVERT_TASK = "converting the share"
QUANTIZE_TASK = "quantizing to 4 bits"


def file_hashes(ctx: AgentContext) -> FileHashes:
    """The agent's own memory of checkpoint file hashes (in its cache, not the user's)."""
    return FileHashes.at(ctx.cache.root / CACHE_SUBDIR / "file-hashes.json")


def _disk_read_bps(ctx: AgentContext) -> float | None:
    """The disk read speed (bytes/s) in the profile this agent announced (None: unknown);
    the coordinator planned the share's window with the same figure."""
    identity = getattr(ctx, "identity", None)  # the daemon's hello payload
    profile = identity.get("profile") if isinstance(identity, dict) else None
    gbps = profile.get("disk_read_gbps") if isinstance(profile, dict) else None
    return float(gbps) * 1e9 if isinstance(gbps, int | float) and gbps > 0 else None


def checkpoint_source(shard: ShardSpec, ctx: AgentContext
                      ) -> tuple[ShardSpec, CheckpointInbox | None]:
    """Where this agent reads the share's checkpoint: in place (the spec rewritten to the
    allowed, resolved path) or from an inbox the coordinator fills with its files."""
    source = allowed_checkpoint(shard.checkpoint, ctx.config.allowed_checkpoint_dirs)
    if source is not None:
        return dataclasses.replace(shard, checkpoint=str(source)), None
    if not shard.files:
        raise DeployError(
            f"agent {ctx.name} reads checkpoints in place only under the directories its "
            f"--allow-checkpoint-dir names, not {shard.checkpoint!r}, and was not offered "
            "the checkpoint's files; deploy with this release's SDK (it sends them)")
    return shard, CheckpointInbox(ctx.cache.root / CACHE_SUBDIR / "checkpoints",
                                  shard.checkpoint_digest, list(shard.files), ctx.cache,
                                  file_hashes(ctx))


def build_worker(spec: ShardSpec, share: TensorShare, ctx: AgentContext, checkpoint_dir: Path,
                 inbox: CheckpointInbox | None, progress: LoadProgress
                 ) -> tuple[TensorWorker, int | None]:
    """The share's worker and its window budget (None: all resident), after checking the
    checkpoint against `spec`'s digest and converting the share (once) into the cache."""
    from edge_runtime.llm.checkpoint import Checkpoint
    from edge_runtime.llm.local import window_budget
    from edge_runtime.llm.slices import convert_share
    from edge_runtime.llm.worker import TensorWorker

    ckpt = Checkpoint(checkpoint_dir, hashes=file_hashes(ctx))
    if ckpt.digest != spec.checkpoint_digest:
        if inbox is not None:  # changed on disk since it was verified
            inbox.discard()
            raise ShardIntegrityError(
                f"the checkpoint files in agent {ctx.name}'s cache no longer match "
                "their digest (changed on disk); they were deleted — redeploy to send them")
        raise CheckpointError(
            f"the checkpoint at {checkpoint_dir} on agent {ctx.name} differs "
            "from the coordinator's (digest mismatch); copy the same checkpoint here")
    slices = convert_share(ckpt, share, ctx.cache.root / CACHE_SUBDIR,
                           progress=progress.hook(CONVERT_TASK, "blocks"))
    config = ckpt.config
    del ckpt  # unmap the checkpoint before serving: only the slices stay
    gc.collect()
    window = window_budget(config, share, slices, spec.memory_budget, spec.max_context,
                           spec.max_batch)
    # quantize="q4" with a budget below the peak of loading 4-bit kernels streams int8
    # blocks through the window (the SDK's plan predicts the same placement, from the
    # same disk speed: this agent's profile)
    worker = TensorWorker(config, slices, share, max_context=spec.max_context,
                          window_budget_bytes=window, quantize=spec.quantize,
                          slots=spec.max_batch, stream_quantized=True,
                          read_bps=_disk_read_bps(ctx),
                          progress=progress.hook(QUANTIZE_TASK, "blocks"))
    return worker, window


__all__ = ["CACHE_SUBDIR", "CONVERT_TASK", "QUANTIZE_TASK", "build_worker", "checkpoint_source",
           "file_hashes"]
