"""An llm-shard's job queue: its jobs (load, ready, connect, step) run in order on one
thread of their own.

Why a thread and a queue: the agent's control loop must keep answering heartbeats
and `status` (the coordinator polls it for conversion progress) while a share is
converted, which takes seconds to minutes; and running jobs in order is the only
signalling `llm_ready` needs (it runs after the load).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_runtime.protocol import Message

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One piece of work for the share's thread."""

    kind: str  # "load", or the kind of `message`
    request_id: int = 0
    client: bytes = b""
    message: Message | None = None
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    arrived: float = field(default_factory=time.time)  # wall clock: a traced step's queue span


class JobThread:
    """Runs `run(job)` for each queued job in order; `release()` once, on the thread,
    as it stops (so a job still running, a conversion, is never cut off)."""

    def __init__(self, name: str, run: Callable[[Job], None],
                 release: Callable[[], None]) -> None:
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._run = run
        self._release = release
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def put(self, job: Job) -> None:
        self._queue.put(job)

    def stop(self, timeout_s: float) -> bool:
        """Ask the thread to stop after the jobs queued; True if it ended in `timeout_s`."""
        self._queue.put(None)
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                self._release()
                return
            self._run(job)


def limit_blas(wanted: int | None, own: int | None) -> tuple[Any, int | None]:
    """Cap numpy's BLAS pool for the jobs' compute: the spec's count (`wanted`), never
    above the agent's own thread cap; returns the limiter (to restore at the end, None
    when nothing was capped) and the count.

    Why: several agents on one host each start a pool as large as the machine;
    multi-token steps (the prefill) then oversubscribe the cores and run 20x slower.
    """
    threads = wanted if own is None else own if wanted is None else min(wanted, own)
    if threads is None:
        return None, None
    from threadpoolctl import threadpool_limits

    log.info("llm-shard: BLAS limited to %d thread(s)", threads)
    return threadpool_limits(limits=threads, user_api="blas"), threads


__all__ = ["Job", "JobThread", "limit_blas"]
