"""`ShareWeights`: where one share's weight blocks live while it serves.

Why apart from the forward pass (`worker.py`): the pass asks for "the weights of block
i for the duration of this `with`" and does not care whether they are fp32 views
pinned in memory, views of a block the sliding window just read, packed batching
kernels, 4-bit onnxruntime kernels loaded once, or int8 blocks streamed through the
window. Choosing among those — from the budget, the weight format and the number of
KV slots — and keeping the counters of each is this module's one job.

- fp32 (`quantize=None`): a residency plan keeps what fits for good and streams the
  rest through a `LayerWindow` (a sliding window over a cyclic scan re-reads
  everything); a batching share whose budget holds its weights twice gets every
  matrix as a `PackedMatMul`.
- "q4": every matrix a `Q4MatMul`, read once; a batching share with room also gets an
  int8 twin of every matrix for prefill rows (`quant.RowRoute`). A budget below the
  peak of loading the share so (`q4_load_bytes`) streams int8 blocks through the window
  instead when asked (`stream_quantized`; `int8slices.py` says why not 4-bit).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from edge_runtime.errors import ConfigError
from edge_runtime.llm.int8slices import SCALE as INT8_SCALE
from edge_runtime.llm.int8slices import convert_int8, int8_views
from edge_runtime.llm.packed import PackedMatMul
from edge_runtime.llm.q4_segments import Q4AttentionIn, Q4FeedForward, SegmentShape, fuse_block
from edge_runtime.llm.quant import BLOCK as Q4_BLOCK
from edge_runtime.llm.quant import Int8Streamed, Q4MatMul, RowRoute, trim_heap
from edge_runtime.llm.residency import (
    FP32_COMPUTE_BPS,
    INT8_STREAM_COMPUTE_BPS,
    ResidencyPlan,
    plan_residency,
    q4_resident_bytes,
)
from edge_runtime.llm.slices import BlockSpec, block_arrays
from edge_runtime.llm.window import LayerWindow, WindowStats, read_block

log = logging.getLogger(__name__)

Weight = np.ndarray | Q4MatMul | PackedMatMul | Int8Streamed | Q4AttentionIn | Q4FeedForward


class ShareWeights:
    """One share's blocks: resident, windowed, packed, 4-bit or int8-streamed."""

    def __init__(
        self,
        blocks: tuple[BlockSpec, ...],
        slices_dir: Path,
        *,
        budget: int | None,
        quantize: str | None,
        slots: int,
        stream_quantized: bool,
        read_bps: float,
        progress: Callable[[int, int], None] | None = None,
        segments: SegmentShape | None = None,
    ) -> None:
        """`blocks`: the share's blocks (`stage_blocks`), in the slice directory
        `slices_dir`; `budget`: bytes for weights (None: unlimited); `read_bps`: this
        device's disk read speed, for the residency plan. `ConfigError` for a weight
        format other than None or "q4", or a "q4" share its budget cannot load without
        `stream_quantized`; `MemoryBudgetError` before any read when the budget cannot
        even read one block ahead. `segments`: a resident "q4" share of a model
        `q4_segments.fusable` runs each layer's norm, projections and element-wise work as
        two fused graphs (None: one kernel per matrix)."""
        self.blocks = blocks
        self._read_bps = read_bps
        self._segments = segments
        self._views: dict[int, dict[str, Weight]] = {}
        self.q4: dict[int, dict[str, Weight]] = {}  # a 4-bit share's weights, by block
        self._window_blocks = blocks  # what the window reads: fp32, or int8 twins
        self._int8_stream = False
        self.route: RowRoute | None = None  # int8 twins for prefill rows, if built
        self.window: LayerWindow | None = None
        self.residency: ResidencyPlan | None = None  # where the window keeps each block
        if quantize is None:
            # keep what fits for good, stream the rest (a sliding window over a cyclic
            # scan re-reads everything); MemoryBudgetError here, before any read, when
            # the budget cannot even read one block ahead
            self._open_window(budget, FP32_COMPUTE_BPS)
        elif quantize == "q4":
            # the peak of loading the share as 4-bit kernels (onnxruntime's copies and the
            # fp32 block being converted: `residency.q4_resident_bytes`, the SDK's rule)
            need = q4_load_bytes(blocks)
            if budget is not None and budget < need and stream_quantized:
                # 4-bit kernels cannot stream (int8slices.py says why): int8 blocks do
                self._window_blocks = convert_int8(blocks, slices_dir)
                self._int8_stream = True
                self._open_window(budget, INT8_STREAM_COMPUTE_BPS)
            elif budget is not None and budget < need:
                raise ConfigError(
                    f"4-bit weights serve resident shares only: this share needs "
                    f"{need / 1e6:.1f} MB for weights but the budget leaves "
                    f"{budget / 1e6:.1f} MB; raise the memory budget or use "
                    "fp32 weights with a sliding window"
                )
            # int8 twins for prefill rows take 1 byte per weight more: batching shares
            # whose budget holds them (as for the packed fp32 kernels)
            else:
                twins = sum(b.nbytes for b in blocks) // 4  # 1 byte per weight
                if slots > 1 and (budget is None or budget >= need + twins):
                    self.route = RowRoute()
                self._load_q4(progress)
        else:
            raise ConfigError(f"quantize={quantize!r} is not supported; use None or 'q4'")
        self._packed: dict[int, dict[str, Weight]] = {}
        if self.window is not None and slots > 1 and not self._int8_stream:
            self._pack_if_it_fits(budget)

    def _load_q4(self, progress: Callable[[int, int], None] | None = None) -> None:
        """Read every block once; matrices become 4-bit kernels, vectors stay fp32;
        `progress(done, total)` after each block (the agent's status shows it)."""
        t0 = time.perf_counter()
        self._q4_bytes = 0
        for index, block in enumerate(self.blocks):
            weights: dict[str, Weight] = {}
            arrays = block_arrays(block, read_block(block.path, block.nbytes))
            fused = None if self._segments is None else \
                fuse_block(arrays, self._segments, self.route)
            for name, arr in (arrays if fused is None else fused).items():
                if isinstance(arr, Q4AttentionIn | Q4FeedForward):
                    weights[name] = arr
                    self._q4_bytes += arr.nbytes
                elif arr.ndim == 2 and arr.shape[0] % Q4_BLOCK == 0:
                    op = Q4MatMul(arr, self.route)
                    weights[name] = op
                    self._q4_bytes += op.nbytes
                else:
                    weights[name] = arr.copy()
                    self._q4_bytes += arr.nbytes
            self.q4[index] = weights
            if progress is not None:
                progress(index + 1, len(self.blocks))
            # the fp32 block and the kernels' build copies are freed: hand the pages back
            # now, so the loading peak stays near the serving size plus one block
            trim_heap()
        self._q4_load_s = time.perf_counter() - t0
        self._q4_uses = 0
        log.info("4-bit share ready: %.1f MB in %.1f s", self._q4_bytes / 1e6, self._q4_load_s)

    @property
    def fused(self) -> bool:
        """Whether this 4-bit share runs fused layer segments (`q4_segments`)."""
        return any(isinstance(w, Q4AttentionIn | Q4FeedForward)
                   for block in self.q4.values() for w in block.values())

    @property
    def packed(self) -> bool:
        """Whether the matrices have batching kernels (a batching share with room): fp32
        as `PackedMatMul`, 4-bit with int8 twins for prefill rows."""
        return bool(self._packed) or self.route is not None

    @property
    def packed_bytes(self) -> int:
        """Memory the batching kernels hold beyond the weights themselves."""
        fp32 = sum(w.packed_bytes for block in self._packed.values() for w in block.values()
                   if isinstance(w, PackedMatMul))
        return fp32 + sum(w.twin_bytes for block in self.q4.values() for w in block.values()
                          if isinstance(w, Q4MatMul | Q4AttentionIn | Q4FeedForward))

    def _pack_if_it_fits(self, budget: int | None) -> None:
        """A batching share whose budget holds its weights twice gets every matrix as a
        `PackedMatMul` (steps of several rows then cost about one row's); else numpy."""
        total = sum(b.nbytes for b in self.blocks)
        if budget is not None and budget < 2 * total:
            log.info("batching without packed kernels: the budget (%.1f MB) does not hold "
                     "the weights twice (%.1f MB)", budget / 1e6, 2 * total / 1e6)
            return
        assert self.window is not None
        for index, block in enumerate(self.blocks):
            with self.window.use(index) as buf:
                arrays = block_arrays(block, buf)
                self._packed[index] = {
                    name: PackedMatMul(arr) if arr.ndim == 2 and name != "embedding" else arr
                    for name, arr in arrays.items()}

    @contextmanager
    def use(self, index: int) -> Iterator[Mapping[str, Weight]]:
        """The weights of block `index` for the duration of the `with` (declarative)."""
        packed = self._packed.get(index)
        if packed is not None:
            yield packed
            return
        if self.window is None:
            self._q4_uses += 1
            yield self.q4[index]
            return
        with self.window.use(index) as buf:
            yield self._arrays(index, buf)

    def _open_window(self, budget: int | None, compute_bps: float) -> None:
        """Plan which blocks stay resident (keep what fits for good, stream the rest: a
        sliding window over a cyclic scan re-reads everything) and open the window;
        `MemoryBudgetError` here, before any read, when not even one block fits."""
        blocks = self._window_blocks
        self.residency = plan_residency([b.nbytes for b in blocks],
                                        [b.nbytes / compute_bps for b in blocks],
                                        budget, self._read_bps)
        self.window = LayerWindow(blocks, budget, pinned=self.residency.resident)

    def _arrays(self, index: int, buf: np.ndarray) -> dict[str, Weight]:
        """The weights of a loaded block (views into `buf`), kept for pinned blocks."""
        assert self.window is not None
        views = self._views.get(index)
        if views is None:
            block = self._window_blocks[index]
            if self._int8_stream:
                raw = int8_views(block, buf)
                views = {name: Int8Streamed(arr, raw[name + INT8_SCALE])
                         if name + INT8_SCALE in raw else arr
                         for name, arr in raw.items() if not name.endswith(INT8_SCALE)}
            else:
                views = dict(block_arrays(block, buf))
            if self.window.is_pinned(index):
                self._views[index] = views
        return views

    def stats(self) -> WindowStats:
        if self.window is not None:
            stats = self.window.stats()
            if self.residency is None:
                return stats
            return dataclasses.replace(
                stats, predicted_s_per_token=self.residency.predicted_s_per_token)
        n = len(self.blocks)
        return WindowStats(
            blocks=n,
            resident=True,
            budget_bytes=self._q4_bytes,
            loads=n,
            bytes_read=sum(b.nbytes for b in self.blocks),
            load_seconds=self._q4_load_s,
            wait_seconds=0.0,
            uses=self._q4_uses,
            peak_loaded_bytes=self._q4_bytes,
        )

    def close(self) -> None:
        if self.window is not None:
            self.window.close()


def q4_load_bytes(blocks: Sequence[BlockSpec]) -> int:
    """Peak bytes of loading `blocks` resident as 4-bit kernels: every 2-D array whose
    input size is a multiple of 32 becomes a `Q4MatMul` of 5/8 byte per weight (codes
    and block scales), the rest stays fp32 (`residency.q4_resident_bytes`)."""
    q4 = fp32 = 0
    for block in blocks:
        for spec in block.arrays.values():
            size = int(np.prod(spec.shape))
            if len(spec.shape) == 2 and spec.shape[0] % Q4_BLOCK == 0:
                q4 += size * 5 // 8
            else:
                fp32 += 4 * size
    return q4_resident_bytes(q4, fp32, max((b.nbytes for b in blocks), default=0))


def stage_blocks(blocks: Sequence[BlockSpec], layers: tuple[int, int],
                 n_layers: int) -> tuple[BlockSpec, ...]:
    """The blocks of the layers [start, end) (attention and MLP of each), then the LM
    head's chunks if the range ends at the last layer; every block when it is all."""
    first, end = layers
    if not 0 <= first < end <= n_layers:
        raise ConfigError(f"layer range {layers} is not within the model's {n_layers} layers")
    head = tuple(blocks[2 * n_layers:]) if end == n_layers else ()
    return (*blocks[2 * first: 2 * end], *head)


def matmul(x: np.ndarray, w: Weight) -> np.ndarray:
    """x @ w for an fp32 matrix, a packed fp32 kernel or a 4-bit kernel."""
    if isinstance(w, Q4MatMul | PackedMatMul | Int8Streamed):
        return w(x)
    out: np.ndarray = x @ w
    return out


def vector(weights: Mapping[str, Weight], name: str) -> np.ndarray:
    """The fp32 vector `name` of a block's weights (a norm, a bias)."""
    w = weights[name]
    assert isinstance(w, np.ndarray), name
    return w


__all__ = ["ShareWeights", "Weight", "matmul", "q4_load_bytes", "stage_blocks", "vector"]
