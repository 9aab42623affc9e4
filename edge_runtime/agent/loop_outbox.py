"""`LoopOutbox`: frames other threads hand the agent's control loop to send.

Why a queue and a pipe: ZeroMQ sockets are not thread-safe, so stage workers and lanes
never send; they put the frame here and write one byte to a pipe the loop polls next
to its ROUTER socket, which wakes it at once (`daemon.py` sends). A full pipe already
wakes the loop, so the write never blocks; after `close()` the pipe's file descriptors
may be reused by the process, so a late worker's wake-up is dropped instead. (Not
`transports.linkemu.Outbox`, which delays frames to emulate a slow link.)
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from edge_runtime.protocol import Hop
from transports.wire import Frame


@dataclass
class Outgoing:
    """One frame to send: to a client of the ROUTER (`identity`) or a peer agent (`hop`)."""

    identity: bytes | None  # set: a client of our ROUTER; None: a peer agent (hop)
    hop: Hop | None
    frame: Frame


class LoopOutbox:
    """A thread-safe queue of `Outgoing` frames and the pipe that wakes the loop."""

    def __init__(self) -> None:
        # a deque, not a queue.Queue: append and popleft are atomic, and the loop checks
        # it after every request it answers itself, mostly empty — a Queue's lock and
        # its Empty exception cost tens of µs there on a cache-cold CPU
        self._queue: deque[Outgoing] = deque()
        self._closed = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    @property
    def wake_fd(self) -> int:
        """The pipe's read end, for the loop's poller."""
        return self._wake_r

    def put(self, item: Outgoing) -> None:
        """Queue `item` (from any thread) and wake the loop."""
        self._queue.append(item)
        self.wake()

    def wake(self) -> None:
        """Wake the loop (from any thread) without queueing anything."""
        if self._closed:  # a late worker after close(): the fd number may be reused
            return
        with contextlib.suppress(BlockingIOError):  # a full pipe already wakes the loop
            os.write(self._wake_w, b"x")

    def drain_wake(self) -> None:
        """Empty the pipe (on the loop, after it woke)."""
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def __bool__(self) -> bool:
        """Whether frames are queued (a cheap test before `pending`)."""
        return bool(self._queue)

    def pending(self) -> Iterator[Outgoing]:
        """The queued frames, oldest first, until the queue is empty (on the loop)."""
        queued = self._queue
        while queued:
            yield queued.popleft()  # the loop is the only consumer: never empty here

    def close(self) -> None:
        """Close the pipe; later wake-ups are dropped. Safe to call twice."""
        self._closed = True
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)


__all__ = ["LoopOutbox", "Outgoing"]
