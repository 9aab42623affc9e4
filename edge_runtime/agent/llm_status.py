"""What an llm-shard reports about itself: its status map, and the progress of its load.

Why a module of its own: the status map is read by people (`edge-runtime status`, the
dashboard), by metrics and, while a share loads, polled by the coordinator for the
progress of conversion and quantization (`TaskProgress` in the map's "progress" list,
`edge_runtime.protocol.progress`). The share's worker thread writes progress and the
control loop reads it at the same time: `LoadProgress` holds a lock for that.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

from edge_runtime.agent.llm_timing import rss_bytes
from edge_runtime.protocol.kinds import LLM_SHARD
from edge_runtime.protocol.progress import MAX_TASKS, PROGRESS_KEY, TaskProgress


class LoadProgress:
    """The tasks of one load, in order: finished ones at their totals, the last one live."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tasks: list[TaskProgress] = []

    def hook(self, task: str, unit: str = "B") -> Callable[[int, int], None]:
        """A `progress(done, total)` callback for a loop doing `task` (`convert_share`'s
        and the 4-bit load's hook): the first call starts the task, later ones move it."""
        started: float | None = None

        def report(done: int, total: int) -> None:
            nonlocal started
            now = time.monotonic()
            first, started = started is None, now if started is None else started
            record = TaskProgress(task, max(0, int(done)), max(0, int(total)), unit,
                                  now - started)
            with self._lock:
                if first or not self._tasks:
                    self._tasks = [*self._tasks, record][-MAX_TASKS:]
                else:
                    self._tasks[-1] = record

        return report

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [t.to_meta() for t in self._tasks]


def share_status(*, spec: Any, plan: Any, share: Any, worker: Any, missing: list[str],
                 failed: BaseException | None, memory_bytes: int, blas_threads: int | None,
                 collective: dict[str, Any], counters: dict[str, Any],
                 progress: LoadProgress) -> dict[str, Any]:
    """The share's status map (`StatusReply.deployments[id]`, `LlmReadyReply.status`)."""
    current, peak = rss_bytes()
    window = {} if worker is None else dataclasses.asdict(worker.stats())
    return {
        "type": LLM_SHARD,
        "rank": spec.rank,
        "hub": plan.hub,
        "ready": worker is not None,
        "missing": missing,
        "failed": None if failed is None else str(failed),
        "share": {"kv_heads": list(share.kv_heads),
                  "mlp_columns": list(share.mlp_columns),
                  "vocab_rows": list(share.vocab_rows),
                  "experts": list(share.experts),  # (0, 0): dense, or none here
                  "weight_bytes": share.weight_bytes},
        "memory_bytes": memory_bytes,
        "packed_kernels": worker is not None and worker.packed,
        "fused_segments": worker is not None and worker.fused,
        "quantize": spec.quantize,
        "blas_threads": blas_threads,
        "rss_bytes": current,
        "peak_rss_bytes": peak,
        "window": window,
        "collective": collective,
        PROGRESS_KEY: progress.snapshot(),
        **counters,
    }


__all__ = ["LoadProgress", "share_status"]
