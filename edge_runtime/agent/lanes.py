"""Worker threads that do an agent's slow control work, so its loop never does.

Loading a shard (onnxruntime session creation, seconds for a large model), hashing an
upload, unloading, and probing a link to a peer that may not answer all take far
longer than a heartbeat interval. The control loop hands each such request to a lane
and goes back to answering pings; the lane's thread answers the request when done.
One thread per lane runs its jobs in arrival order, so the chunks of one upload, or a
deploy and the unload that follows it, never overtake each other.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 5.0
"""How long closing a lane waits for the job it is running (a stuck load is abandoned:
the thread is a daemon thread and dies with the process)."""


class Lane:
    """One worker thread with a FIFO of jobs; `max_queued` bounds the backlog."""

    def __init__(self, name: str, max_queued: int = 0) -> None:
        self.name = name
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue(max_queued)
        self._thread = threading.Thread(target=self._run, name=f"lane-{name}", daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], None]) -> bool:
        """Queue `job`; False (nothing queued) when the backlog is full."""
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            return False
        return True

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job()
            except Exception:  # a job answers its own errors; this is a last resort
                log.exception("%s lane job failed", self.name)

    def close(self) -> None:
        """Stop after the running job (queued ones are dropped)."""
        while True:
            try:
                self._jobs.get_nowait()
            except queue.Empty:
                break
        self._jobs.put(None)
        self._thread.join(JOIN_TIMEOUT_S)


__all__ = ["JOIN_TIMEOUT_S", "Lane"]
