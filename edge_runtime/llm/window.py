"""`LayerWindow`: at most a memory budget's worth of weight blocks in RAM, read ahead from disk.

Why: a device may serve a share larger than its RAM if it holds only a window of its
blocks (attention / MLP of each layer, the LM head) and streams the rest from disk
while the current block computes and communicates. Model code stays declarative:

    with window.use(i) as buf:   # waits for block i if it is not loaded yet
        ...compute with views into buf...
    # released here (when the window is smaller than the share), so the loader can
    # read the next block into the freed budget

Blocks are used cyclically (0..n-1 per forward pass, again for the next token), so the
background loader reads ahead in that order. A use out of order is still correct: the
window drops what it read ahead and restarts from the block asked for.

A cyclic scan defeats a purely sliding window (each block is evicted just before it is
needed again, so every token re-reads the whole share), so the blocks named in `pinned`
(chosen by `residency.plan_residency`) are read once, first, and kept; only the others
stream, through what the budget leaves beside the pinned ones.

Memory honesty: each block is read with `os.readv` into a fresh buffer, then
`posix_fadvise(DONTNEED)` drops the file's pages from the page cache, so the process'
RSS is the true memory cost and no hidden cached copy makes reloads look free. With a
budget that holds every block, everything is read once and stays; nothing is reloaded.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from edge_runtime.errors import CheckpointError, MemoryBudgetError
from edge_runtime.llm.slices import BlockSpec

log = logging.getLogger(__name__)

# How long `use()` waits for one block before failing: a block of a few hundred MB reads
# in about a second from a slow SD card; two minutes means the disk is gone.
BLOCK_WAIT_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class WindowStats:
    """Counters for the benchmark: what was read, how long, how long compute waited."""

    blocks: int
    resident: bool
    budget_bytes: int
    loads: int
    bytes_read: int
    load_seconds: float
    wait_seconds: float
    uses: int
    peak_loaded_bytes: int
    pinned_blocks: int = 0  # read once and kept while the others stream
    streamed_bytes_per_pass: int = 0  # what one pass over the blocks reads again (0: none)
    predicted_s_per_token: float = 0.0  # the residency plan's prediction (0: none made)


def read_block(path: os.PathLike[str] | str, nbytes: int) -> np.ndarray:
    """Read a whole file into a fresh buffer, then drop its pages from the page cache."""
    buf = np.empty(nbytes, dtype=np.uint8)
    view = memoryview(buf.data)
    fd = os.open(path, os.O_RDONLY)
    try:
        got = 0
        while got < nbytes:
            n = os.readv(fd, [view[got:]])
            if n == 0:
                raise CheckpointError(
                    f"{path} ended after {got} of {nbytes} bytes; re-convert the slices"
                )
            got += n
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return buf


class LayerWindow:
    """A byte-budgeted window over an ordered list of blocks with a read-ahead thread:
    the `pinned` blocks (every block when the budget holds them all) are read once and
    kept; the others stream in cycle order through the rest of the budget."""

    def __init__(self, blocks: Sequence[BlockSpec], budget_bytes: int | None = None, *,
                 pinned: Collection[int] = ()) -> None:
        if not blocks:
            raise ValueError("a LayerWindow needs at least one block")
        self.blocks = tuple(blocks)
        n = len(self.blocks)
        total = sum(b.nbytes for b in self.blocks)
        self.resident = budget_bytes is None or budget_bytes >= total
        self.budget_bytes = total if budget_bytes is None else budget_bytes
        keep = set(range(n)) if self.resident else set(pinned)
        if not keep <= set(range(n)):
            raise IndexError(f"pinned blocks {sorted(keep)} beyond the {n} blocks")
        self.pinned = tuple(sorted(keep))
        self.streamed = tuple(i for i in range(n) if i not in keep)
        self._stream_pos = {index: k for k, index in enumerate(self.streamed)}
        pinned_bytes = sum(self.blocks[i].nbytes for i in self.pinned)
        self._stream_budget = self.budget_bytes - pinned_bytes
        if self.streamed:
            largest = max((self.blocks[i] for i in self.streamed), key=lambda b: b.nbytes)
            if self._stream_budget < largest.nbytes:
                raise MemoryBudgetError(
                    f"a weight window of {self.budget_bytes / 1e6:.2f} MB "
                    f"({pinned_bytes / 1e6:.2f} MB of it pinned) cannot hold block "
                    f"{largest.name} ({largest.nbytes / 1e6:.2f} MB): raise --memory-budget "
                    "or spread the model over more devices"
                )
        self._cond = threading.Condition()
        self._kept: dict[int, np.ndarray] = {}  # pinned block index -> buffer
        self._kept_bytes = 0
        self._pin_next = 0  # pinned blocks handed to the loader so far
        # a pinned read that failed: (block index, error, reported to a use yet)
        self._pin_error: tuple[int, BaseException, bool] | None = None
        self._loaded: dict[int, np.ndarray] = {}  # streamed sequence number -> buffer
        self._loaded_bytes = 0
        self._use_seq = 0
        self._load_seq = 0
        self._generation = 0
        self._error: BaseException | None = None
        self._stop = False
        self._loads = self._bytes_read = self._uses = self._peak = 0
        self._load_s = self._wait_s = 0.0
        self._failed_seq = 0
        self._loader_alive = True
        # tracing hook (agent/tracing.py): called (lane, block name, start, end, bytes), with
        # perf_counter times, for each block read ("disk") and each wait for one ("window")
        self.observer: Callable[[str, str, float, float, int], None] | None = None
        self._thread = self._start_loader()

    def _start_loader(self) -> threading.Thread:
        thread = threading.Thread(target=self._loader, name="layer-window", daemon=True)
        thread.start()
        return thread

    @property
    def n(self) -> int:
        return len(self.blocks)

    def is_pinned(self, index: int) -> bool:
        """Whether block `index` stays loaded once read (views into it may be kept)."""
        return index not in self._stream_pos

    def _seq_block(self, seq: int) -> BlockSpec:
        return self.blocks[self.streamed[seq % len(self.streamed)]]

    def _pin_pending(self) -> bool:
        return self._pin_next < len(self.pinned) and self._pin_error is None

    def _may_load(self) -> bool:
        if self._pin_pending():
            return True
        if not self.streamed:
            return False
        ahead = self._load_seq - self._use_seq
        size = self._seq_block(self._load_seq).nbytes
        return ahead < len(self.streamed) and self._loaded_bytes + size <= self._stream_budget

    def _read(self, block: BlockSpec) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        buf = read_block(block.path, block.nbytes)
        dt = time.perf_counter() - t0
        if self.observer is not None:
            self.observer("disk", block.name, t0, t0 + dt, block.nbytes)
        return buf, dt

    def _count(self, block: BlockSpec, dt: float) -> None:
        self._loads += 1
        self._bytes_read += block.nbytes
        self._load_s += dt

    def _loader(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not self._may_load():
                    self._cond.wait()
                if self._stop:
                    return
                if self._pin_pending():
                    self._load_pinned(self.pinned[self._pin_next])
                    continue
                seq, gen = self._load_seq, self._generation
                block = self._seq_block(seq)
                self._load_seq += 1
                self._loaded_bytes += block.nbytes  # reserve before reading
            try:
                buf, dt = self._read(block)
            except (OSError, CheckpointError) as exc:
                with self._cond:
                    if gen == self._generation:
                        self._error, self._failed_seq = exc, seq
                        self._loaded_bytes -= block.nbytes
                    self._loader_alive = False
                    self._cond.notify_all()
                return  # the next `use()` reports the error and starts a fresh loader
            with self._cond:
                self._count(block, dt)
                if gen != self._generation:
                    continue  # a reset dropped this read-ahead (its reservation too)
                self._loaded[seq] = buf
                self._peak = max(self._peak, self._kept_bytes + self._loaded_bytes)
                self._cond.notify_all()

    def _load_pinned(self, index: int) -> None:
        """Read pinned block `index` once (loader thread, lock held; released while the
        block is read). A failure is kept for the next use to report."""
        block = self.blocks[index]
        self._pin_next += 1
        self._cond.release()
        try:
            buf, dt = self._read(block)
        except (OSError, CheckpointError) as exc:
            self._cond.acquire()
            self._pin_next -= 1
            self._pin_error = (index, exc, False)
            self._cond.notify_all()
            return
        self._cond.acquire()
        self._count(block, dt)
        self._kept[index] = buf
        self._kept_bytes += block.nbytes
        self._peak = max(self._peak, self._kept_bytes + self._loaded_bytes)
        self._cond.notify_all()

    def _wait(self, ready: Callable[[], bool], index: int) -> float:
        """Wait (lock held) until `ready()`; report failed reads; the wait's start time."""
        t0 = time.perf_counter()
        deadline = t0 + BLOCK_WAIT_TIMEOUT_S
        while not ready():
            if self._pin_error is not None and self.is_pinned(index):
                failed, error, reported = self._pin_error
                if not reported:  # the first use after a failure reports it ...
                    self._pin_error = (failed, error, True)
                    raise CheckpointError(
                        f"loading block {self.blocks[failed].name} failed: {error}")
                self._pin_error = None  # ... the next one has the loader read it again
                self._cond.notify_all()
            if self._error is not None and not self.is_pinned(index):
                error, failed_seq = self._error, self._failed_seq
                self._recover()
                if failed_seq == self._use_seq:  # the block this use waits for
                    raise CheckpointError(
                        f"loading block {self.blocks[index].name} failed: {error}")
                continue  # a read-ahead failed: retry it after this block
            if not self._loader_alive:
                self._loader_alive = True
                self._thread = self._start_loader()
            left = deadline - time.perf_counter()
            if left <= 0:
                raise CheckpointError(
                    f"block {self.blocks[index].name} did not load within "
                    f"{BLOCK_WAIT_TIMEOUT_S:.0f} s; check the disk holding "
                    f"{self.blocks[index].path}")
            self._cond.wait(left)
        return t0

    @contextmanager
    def use(self, index: int) -> Iterator[np.ndarray]:
        """Wait for block `index`, yield its bytes, release it after (unless pinned)."""
        if not 0 <= index < self.n:
            raise IndexError(f"block {index} of {self.n}")
        pinned = self.is_pinned(index)
        with self._cond:
            if pinned:
                seq = -1
                t0 = self._wait(lambda: index in self._kept, index)
                buf = self._kept[index]
            else:
                if self._use_seq % len(self.streamed) != self._stream_pos[index]:
                    self._restart_at(self._stream_pos[index])
                seq = self._use_seq
                t0 = self._wait(lambda: seq in self._loaded, index)
                buf = self._loaded[seq]
            waited = time.perf_counter()
            self._wait_s += waited - t0
            self._uses += 1
        if self.observer is not None and waited - t0 > 1e-5:
            self.observer("window", self.blocks[index].name, t0, waited, 0)
        try:
            yield buf
        finally:
            if not pinned:
                with self._cond:
                    if self._use_seq == seq and seq in self._loaded:
                        del self._loaded[seq]
                        self._loaded_bytes -= self.blocks[index].nbytes
                        self._use_seq += 1
                        self._cond.notify_all()

    def _recover(self) -> None:
        """After a failed streamed read (lock held): forget the error and restart reading
        at the next block to use.

        The request that needed the block fails, but the window keeps serving: a later
        use starts a fresh loader that reads the block again (once the file is back).
        """
        self._error = None
        self._generation += 1
        self._loaded.clear()
        self._loaded_bytes = 0
        self._load_seq = self._use_seq

    def _restart_at(self, pos: int) -> None:
        """Out-of-order use: drop read-ahead and restart the streamed cycle at position
        `pos` (lock held)."""
        log.debug("window restart at streamed block %d (expected %d)", pos,
                  self._use_seq % len(self.streamed))
        self._generation += 1
        self._error = None
        self._loaded.clear()
        self._loaded_bytes = 0
        self._use_seq = self._load_seq = pos
        self._cond.notify_all()

    def stats(self) -> WindowStats:
        with self._cond:
            return WindowStats(
                blocks=self.n,
                resident=self.resident,
                budget_bytes=self.budget_bytes,
                loads=self._loads,
                bytes_read=self._bytes_read,
                load_seconds=self._load_s,
                wait_seconds=self._wait_s,
                uses=self._uses,
                peak_loaded_bytes=self._peak,
                pinned_blocks=len(self.pinned),
                streamed_bytes_per_pass=sum(self.blocks[i].nbytes for i in self.streamed),
            )

    def close(self) -> None:
        """Stop the loader and drop every buffer."""
        with self._cond:
            self._stop = True
            self._loaded.clear()
            self._kept.clear()
            self._loaded_bytes = self._kept_bytes = 0
            self._cond.notify_all()
        self._thread.join(timeout=5.0)

    def __enter__(self) -> LayerWindow:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["BLOCK_WAIT_TIMEOUT_S", "LayerWindow", "WindowStats", "read_block"]
