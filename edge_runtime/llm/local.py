"""Run N `TensorWorker`s in N threads of one process: the in-process tensor-parallel group.

Why: it exercises exactly the split, the partial sums and the logits gather that the
agents run, with an in-process sum-and-barrier collective in place of ZeroMQ; the
numerics of every plan are tested this way, and single-machine use needs no agents.
Every thread computes the same sum in the same order, so the replicated residual
streams stay bit-identical across workers, as they do behind a star allreduce.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.errors import AgentUnavailableError, MemoryBudgetError
from edge_runtime.llm.checkpoint import Checkpoint
from edge_runtime.llm.config import LlmConfig
from edge_runtime.llm.engine import BatchItem, LlmEngine
from edge_runtime.llm.slices import SliceSet, convert_share
from edge_runtime.llm.tokenizer import LlmTokenizer
from edge_runtime.llm.window import WindowStats
from edge_runtime.llm.worker import Span, TensorWorker
from partitioner.tensor import (
    ACTIVATION_RESERVE_BYTES,
    TensorPlan,
    TensorShare,
    plan_tensor_parallel,
)

log = logging.getLogger(__name__)

# How long a worker waits at a collective for the others before the step fails: far
# above any layer's compute on an edge device, short enough that a dead peer is
# reported instead of hanging the caller.
COLLECTIVE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class RelativeSpeed:
    """A device described only by its memory bandwidth (enough for `plan_tensor_parallel`)."""

    name: str
    mem_bandwidth_gbps: float
    gflops_fp32: float = 1.0


def kv_cache_bytes(config: LlmConfig, share: TensorShare, max_context: int) -> int:
    """The fp32 KV cache a worker of `share` preallocates (the planner's own formula)."""
    return config.decoder_shape(max_context).kv_cache_bytes(share.n_kv_heads)


def window_budget(
    config: LlmConfig,
    share: TensorShare,
    slices: SliceSet,
    memory_budget: int | None,
    max_context: int,
    slots: int = 1,
) -> int | None:
    """Bytes left for weight blocks under a device's memory budget (None = unlimited).

    The budget holds the KV cache (preallocated, one slot per sequence of a batch),
    `ACTIVATION_RESERVE_BYTES` for activations and the interpreter, and the window;
    `MemoryBudgetError` when the window cannot hold the largest block.
    """
    if memory_budget is None:
        return None
    kv = slots * kv_cache_bytes(config, share, max_context)
    window = memory_budget - kv - ACTIVATION_RESERVE_BYTES
    largest = max(slices.blocks, key=lambda b: b.nbytes)
    if window < largest.nbytes:
        need = memory_budget - window + largest.nbytes
        raise MemoryBudgetError(
            f"device {share.device}: a memory budget of {memory_budget / 1e6:.1f} MB leaves "
            f"{max(window, 0) / 1e6:.1f} MB for weights after the KV cache and activations, "
            f"less than block {largest.name} ({largest.nbytes / 1e6:.2f} MB): use at least "
            f"{need / 1e6:.1f} MB, a shorter max_context, or more devices"
        )
    return window


class ThreadCollective:
    """Sum-and-barrier allreduce and gather among N threads.

    One barrier per collective: slots are double-buffered by call parity, so a thread
    that races ahead to call k+1 writes the other set, and it cannot reach call k+2
    (which reuses this set) before every thread has passed call k+1's barrier, i.e.
    finished reading call k.
    """

    def __init__(self, n: int, hub: int, timeout: float = COLLECTIVE_TIMEOUT_S) -> None:
        self.n, self.hub = n, hub
        self._barrier = threading.Barrier(n, timeout=timeout)
        self._slots: list[list[np.ndarray | None]] = [[None] * n, [None] * n]
        self._calls = [0] * n

    def _exchange(self, rank: int, x: np.ndarray) -> list[np.ndarray]:
        slots = self._slots[self._calls[rank] % 2]
        self._calls[rank] += 1
        slots[rank] = x
        self._barrier.wait()
        return [s for s in slots if s is not None]

    def allreduce(self, rank: int, x: np.ndarray) -> np.ndarray:
        parts = self._exchange(rank, x)
        total = parts[0].copy()
        for p in parts[1:]:
            total += p
        return total

    def gather(self, rank: int, x: np.ndarray) -> np.ndarray | None:
        parts = self._exchange(rank, x)
        return np.concatenate(parts, axis=-1) if rank == self.hub else None

    def abort(self) -> None:
        self._barrier.abort()


class WorkerGroup:
    """Workers of one tensor-parallel group in threads of this process, with their
    in-process collective: the whole model (`LocalRunner`) or one pipeline stage
    (`pipeline.PipelineRunner`)."""

    def __init__(self, plan: TensorPlan, workers: list[TensorWorker], thread_prefix: str
                 ) -> None:
        self.plan = plan
        self.workers = workers
        self._collective = ThreadCollective(len(workers), plan.hub)
        self._pool = (ThreadPoolExecutor(max_workers=len(workers),
                                         thread_name_prefix=thread_prefix)
                      if len(workers) > 1 else None)

    def forward(self, spans: Sequence[Span], hidden: np.ndarray | None,
                last_only: bool) -> np.ndarray:
        """The hub's output: logits, or (a pipeline stage before the last) the hidden
        state of every token; `hidden` is the previous stage's (None: embed the ids)."""
        if self._pool is None:
            out = self.workers[0].forward_batch(spans, lambda x: x, lambda x: x,
                                                last_only=last_only, hidden=hidden)
            assert out is not None
            return out
        coll = self._collective

        def run(rank: int) -> np.ndarray | None:
            try:
                return self.workers[rank].forward_batch(
                    spans, lambda x: coll.allreduce(rank, x), lambda x: coll.gather(rank, x),
                    last_only=last_only, hidden=hidden)
            except BaseException:
                coll.abort()
                raise

        futures: list[Future[np.ndarray | None]] = [
            self._pool.submit(run, r) for r in range(len(self.workers))]
        errors = [exc for f in futures if (exc := f.exception()) is not None]
        if errors:
            self._collective = ThreadCollective(len(self.workers), self.plan.hub)
            real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
            if real:
                raise real[0]
            raise AgentUnavailableError("a worker did not reach the collective in time")
        out = futures[self.plan.hub].result()
        assert out is not None
        return out

    def close(self) -> None:
        for w in self.workers:
            w.close()
        if self._pool is not None:
            self._pool.shutdown(wait=True)


class LocalRunner:
    """A checkpoint split by a tensor plan over in-process workers; `forward` gives logits."""

    def __init__(
        self,
        checkpoint: str | Path | Checkpoint,
        *,
        cache_dir: str | Path,
        devices: Sequence[RelativeSpeed] | None = None,
        plan: TensorPlan | None = None,
        memory_budgets: Sequence[int | None] | None = None,
        max_context: int = 256,
        quantize: str | None = None,
        slots: int = 1,
        fused_segments: bool = True,
    ) -> None:
        """`fused_segments=False`: 4-bit shares keep one kernel per matrix instead of
        fused layer segments (`q4_segments`), to compare the two."""
        ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint(checkpoint)
        self.config = ckpt.config
        self.max_context = max_context
        self.slots = slots
        if plan is None:
            devs = list(devices) if devices else [RelativeSpeed("local", 1.0)]
            plan = plan_tensor_parallel(
                self.config.decoder_shape(max_context),
                devs,
                memory_budgets=memory_budgets,
                streaming=True,
                model_digest=ckpt.digest,
            )
        self.plan = plan
        n = len(plan.shares)
        budgets = list(memory_budgets) if memory_budgets is not None else [None] * n
        slices = [convert_share(ckpt, share, cache_dir) for share in plan.shares]
        # Every budget is checked before any worker allocates its cache or reads a block.
        windows = [
            window_budget(self.config, share, s, b, max_context, slots)
            for share, s, b in zip(plan.shares, slices, budgets, strict=True)
        ]
        self.workers = [
            TensorWorker(
                self.config,
                s,
                share,
                max_context=max_context,
                window_budget_bytes=w,
                quantize=quantize,
                slots=slots,
                fused_segments=fused_segments,
            )
            for share, s, w in zip(plan.shares, slices, windows, strict=True)
        ]
        self.group = WorkerGroup(plan, self.workers, "tp-worker")

    def forward(
        self, token_ids: Sequence[int], start: int, *, last_only: bool = True
    ) -> np.ndarray:
        """Logits of the tokens placed at positions start.. (the last row only by default)."""
        return self.forward_batch([BatchItem(0, tuple(token_ids), start)], last_only=last_only)

    def forward_batch(
        self, items: Sequence[BatchItem], *, last_only: bool = True
    ) -> np.ndarray:
        """One step for several sequences, each in its own KV slot: logits of each one's
        last token (or of every token), in item order."""
        spans = [
            Span(item.slot, item.token_ids,
                 np.arange(item.start, item.start + len(item.token_ids)))
            for item in items
        ]
        return self.group.forward(spans, None, last_only)

    def stats(self) -> list[WindowStats]:
        return [w.stats() for w in self.workers]

    def close(self) -> None:
        self.group.close()


def load_local_engine(
    checkpoint: str | Path,
    *,
    cache_dir: str | Path,
    devices: Sequence[RelativeSpeed] | None = None,
    memory_budgets: Sequence[int | None] | None = None,
    max_context: int = 256,
    quantize: str | None = None,
) -> tuple[LlmEngine, LocalRunner]:
    """Validate, plan, convert and load a checkpoint over in-process workers.

    `quantize="q4"`: 4-bit weights (resident shares only; see `quant.py`)."""
    ckpt = Checkpoint(checkpoint)
    runner = LocalRunner(
        ckpt,
        cache_dir=cache_dir,
        devices=devices,
        memory_budgets=memory_budgets,
        max_context=max_context,
        quantize=quantize,
    )
    return LlmEngine(runner, ckpt.config, LlmTokenizer.from_checkpoint(checkpoint)), runner


__all__ = [
    "COLLECTIVE_TIMEOUT_S",
    "LocalRunner",
    "RelativeSpeed",
    "ThreadCollective",
    "WorkerGroup",
    "kv_cache_bytes",
    "load_local_engine",
    "window_budget",
]
