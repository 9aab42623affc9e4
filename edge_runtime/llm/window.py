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
from collections.abc import Iterator, Sequence
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
    """A byte-budgeted window over an ordered list of blocks with a read-ahead thread."""

    def __init__(self, blocks: Sequence[BlockSpec], budget_bytes: int | None = None) -> None:
        if not blocks:
            raise ValueError("a LayerWindow needs at least one block")
        self.blocks = tuple(blocks)
        total = sum(b.nbytes for b in self.blocks)
        largest = max(self.blocks, key=lambda b: b.nbytes)
        if budget_bytes is not None and budget_bytes < largest.nbytes:
            raise MemoryBudgetError(
                f"a weight window of {budget_bytes / 1e6:.2f} MB cannot hold block "
                f"{largest.name} ({largest.nbytes / 1e6:.2f} MB): raise --memory-budget "
                "or spread the model over more devices"
            )
        self.resident = budget_bytes is None or budget_bytes >= total
        self.budget_bytes = total if budget_bytes is None else budget_bytes
        self._cond = threading.Condition()
        self._loaded: dict[int, np.ndarray] = {}  # sequence number -> buffer
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
        self._thread = self._start_loader()

    def _start_loader(self) -> threading.Thread:
        thread = threading.Thread(target=self._loader, name="layer-window", daemon=True)
        thread.start()
        return thread

    @property
    def n(self) -> int:
        return len(self.blocks)

    def _seq_block(self, seq: int) -> BlockSpec:
        return self.blocks[seq % self.n]

    def _may_load(self) -> bool:
        if self.resident:
            return self._load_seq < self.n
        ahead = self._load_seq - self._use_seq
        size = self._seq_block(self._load_seq).nbytes
        return ahead < self.n and self._loaded_bytes + size <= self.budget_bytes

    def _loader(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not self._may_load():
                    self._cond.wait()
                if self._stop:
                    return
                seq, gen = self._load_seq, self._generation
                block = self._seq_block(seq)
                self._load_seq += 1
                self._loaded_bytes += block.nbytes  # reserve before reading
            t0 = time.perf_counter()
            try:
                buf = read_block(block.path, block.nbytes)
            except (OSError, CheckpointError) as exc:
                with self._cond:
                    if gen == self._generation:
                        self._error, self._failed_seq = exc, seq
                        self._loaded_bytes -= block.nbytes
                    self._loader_alive = False
                    self._cond.notify_all()
                return  # the next `use()` reports the error and starts a fresh loader
            dt = time.perf_counter() - t0
            with self._cond:
                self._loads += 1
                self._bytes_read += block.nbytes
                self._load_s += dt
                if gen != self._generation:
                    continue  # a reset dropped this read-ahead (its reservation too)
                self._loaded[seq] = buf
                self._peak = max(self._peak, self._loaded_bytes)
                self._cond.notify_all()

    @contextmanager
    def use(self, index: int) -> Iterator[np.ndarray]:
        """Wait for block `index`, yield its bytes, release it after (unless resident)."""
        if not 0 <= index < self.n:
            raise IndexError(f"block {index} of {self.n}")
        with self._cond:
            if self.resident:
                seq = index
            else:
                if self._use_seq % self.n != index:
                    self._restart_at(index)
                seq = self._use_seq
            t0 = time.perf_counter()
            deadline = t0 + BLOCK_WAIT_TIMEOUT_S
            while seq not in self._loaded:
                if self._error is not None:
                    error, failed = self._error, self._failed_seq
                    self._recover()
                    if failed == seq:
                        raise CheckpointError(
                            f"loading block {self.blocks[index].name} failed: {error}"
                        )
                    continue  # a read-ahead failed: retry it after this block
                if not self._loader_alive:
                    self._loader_alive = True
                    self._thread = self._start_loader()
                left = deadline - time.perf_counter()
                if left <= 0:
                    raise CheckpointError(
                        f"block {self.blocks[index].name} did not load within "
                        f"{BLOCK_WAIT_TIMEOUT_S:.0f} s; check the disk holding "
                        f"{self.blocks[index].path}"
                    )
                self._cond.wait(left)
            self._wait_s += time.perf_counter() - t0
            self._uses += 1
            buf = self._loaded[seq]
        try:
            yield buf
        finally:
            if not self.resident:
                with self._cond:
                    if self._use_seq == seq and seq in self._loaded:
                        del self._loaded[seq]
                        self._loaded_bytes -= self.blocks[index].nbytes
                        self._use_seq += 1
                        self._cond.notify_all()

    def _recover(self) -> None:
        """After a failed read (lock held): forget the error and restart reading at the
        failed block (resident) or at the next block to use (streaming).

        The request that needed the block fails, but the window keeps serving: a later
        use starts a fresh loader that reads the block again (once the file is back).
        """
        self._error = None
        self._generation += 1
        if self.resident:
            self._load_seq = self._failed_seq
        else:
            self._loaded.clear()
            self._loaded_bytes = 0
            self._load_seq = self._use_seq

    def _restart_at(self, index: int) -> None:
        """Out-of-order use: drop read-ahead and restart the cycle at `index` (lock held)."""
        log.debug("window restart at block %d (expected %d)", index, self._use_seq % self.n)
        self._generation += 1
        self._error = None
        self._loaded.clear()
        self._loaded_bytes = 0
        self._use_seq = self._load_seq = index
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
            )

    def close(self) -> None:
        """Stop the loader and drop every buffer."""
        with self._cond:
            self._stop = True
            self._loaded.clear()
            self._loaded_bytes = 0
            self._cond.notify_all()
        self._thread.join(timeout=5.0)

    def __enter__(self) -> LayerWindow:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["BLOCK_WAIT_TIMEOUT_S", "LayerWindow", "WindowStats", "read_block"]
