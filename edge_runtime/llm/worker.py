"""`TensorWorker`: one device's part of the tensor-parallel forward pass.

Why a worker with injected collectives: the same code runs in an agent process (where
`allreduce` is the transports' star allreduce and `gather_logits` a gather to the hub)
and in one process with N threads (an in-process sum-and-barrier, `local.py`), so the
numerics of the split are tested without sockets and the agent adds only transport.

Per layer, each worker computes its partial attention output (its KV-head groups) and
its partial MLP output (its intermediate columns); the allreduce after each sums the
partials, and every worker adds the sum to its own replicated residual. Norms, RoPE and
the residual stream are replicated; the o_proj bias (when present) is added once, after
the sum, and so are Gemma's norms of the attention and MLP outputs (they need the whole
vector). Gemma's final-logit soft-cap is element-wise, so each worker caps its own rows.
The KV cache holds only this worker's heads, preallocated for `max_context`, with one
slot per sequence that may be decoded at once (`slots`).

Batching: `forward_batch` runs several independent sequences in one pass. Their tokens
are stacked, so every matrix product (and every allreduce) is done once for all of
them — decode reads the weights once for B tokens instead of B times; only attention
runs per sequence, over that sequence's own KV slot and positions. A sequence's output
does not depend on what it is batched with.

`quantize="q4"` turns every matrix of a resident share into a 4-bit onnxruntime kernel
(`quant.Q4MatMul`); norms, biases and the KV cache stay fp32. A "q4" share whose budget
cannot hold the peak of loading it so (`q4_load_bytes`) streams int8 blocks through the
window instead when asked (`stream_quantized`; `int8slices.py` says why not 4-bit).
A batching share whose budget holds it also gets an int8 twin of every matrix for the
rows of prefills (`quant.RowRoute`: chosen per sequence, so batching does not change a
sequence's numbers).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from edge_runtime.errors import ConfigError, GenerationError
from edge_runtime.llm.config import LlmConfig
from edge_runtime.llm.int8slices import SCALE as INT8_SCALE
from edge_runtime.llm.int8slices import convert_int8, int8_views
from edge_runtime.llm.kernels import Rope, attention, rms_norm, soft_cap
from edge_runtime.llm.moe import feed_forward
from edge_runtime.llm.packed import PackedMatMul
from edge_runtime.llm.quant import BLOCK as Q4_BLOCK
from edge_runtime.llm.quant import Int8Streamed, Q4MatMul, RowRoute, trim_heap
from edge_runtime.llm.residency import (
    DISK_READ_BPS,
    FP32_COMPUTE_BPS,
    INT8_STREAM_COMPUTE_BPS,
    ResidencyPlan,
    plan_residency,
    q4_resident_bytes,
)
from edge_runtime.llm.slices import BlockSpec, SliceSet, block_arrays
from edge_runtime.llm.window import LayerWindow, WindowStats, read_block
from partitioner.tensor import TensorShare

log = logging.getLogger(__name__)

F32 = np.float32
AllReduce = Callable[[np.ndarray], np.ndarray]
# Takes this worker's logits columns [T, rows]; returns [T, vocab] on the hub, None elsewhere.
GatherLogits = Callable[[np.ndarray], np.ndarray | None]
Weight = np.ndarray | Q4MatMul | PackedMatMul | Int8Streamed


@dataclass(frozen=True)
class Span:
    """One sequence's tokens in a batched step: its KV slot, ids and their positions."""

    slot: int
    token_ids: Sequence[int] | np.ndarray
    positions: Sequence[int] | np.ndarray


class TensorWorker:
    """Owns one device's slices, window and KV cache; computes one forward step."""

    def __init__(
        self,
        config: LlmConfig,
        slices: SliceSet,
        share: TensorShare,
        *,
        max_context: int,
        window_budget_bytes: int | None = None,
        quantize: str | None = None,
        slots: int = 1,
        stream_quantized: bool = False,
        read_bps: float | None = None,
    ) -> None:
        """`stream_quantized`: a "q4" share whose budget cannot hold its 4-bit weights
        streams int8 weights through the window instead of failing (`int8slices`).
        `read_bps`: this device's disk read speed (its profile's), for the residency
        plan's prediction and read-ahead depth (default `residency.DISK_READ_BPS`)."""
        self._read_bps = read_bps or DISK_READ_BPS
        if slots < 1:
            raise ConfigError(f"slots must be at least 1, got {slots}")
        self.config = config
        self.share = share
        self.max_context = max_context
        self.slots = slots
        self.embedding = slices.embedding_table()
        # a pipeline stage's share holds a layer range: only its blocks are used
        self.layer_range = share.layer_range(config.layers)
        self.blocks = stage_blocks(slices.blocks, self.layer_range, config.layers)
        self._views: dict[int, dict[str, Weight]] = {}
        self._q4: dict[int, dict[str, Weight]] = {}
        self._window_blocks = self.blocks  # what the window reads: fp32, or int8 twins
        self._int8_stream = False
        self._route: RowRoute | None = None
        self.window: LayerWindow | None = None
        self.residency: ResidencyPlan | None = None  # where the window keeps each block
        if quantize is None:
            # keep what fits for good, stream the rest (a sliding window over a cyclic
            # scan re-reads everything); MemoryBudgetError here, before any read, when
            # the budget cannot even read one block ahead
            self._open_window(window_budget_bytes, FP32_COMPUTE_BPS)
        elif quantize == "q4":
            # the peak of loading the share as 4-bit kernels (onnxruntime's copies and the
            # fp32 block being converted: `residency.q4_resident_bytes`, the SDK's rule)
            need = q4_load_bytes(self.blocks)
            if window_budget_bytes is not None and window_budget_bytes < need \
                    and stream_quantized:
                # 4-bit kernels cannot stream (int8slices.py says why): int8 blocks do
                self._window_blocks = convert_int8(self.blocks, slices.directory)
                self._int8_stream = True
                self._open_window(window_budget_bytes, INT8_STREAM_COMPUTE_BPS)
            elif window_budget_bytes is not None and window_budget_bytes < need:
                raise ConfigError(
                    f"4-bit weights serve resident shares only: this share needs "
                    f"{need / 1e6:.1f} MB for weights but the budget leaves "
                    f"{window_budget_bytes / 1e6:.1f} MB; raise the memory budget or use "
                    "fp32 weights with a sliding window"
                )
            # int8 twins for prefill rows take 1 byte per weight more: batching shares
            # whose budget holds them (as for the packed fp32 kernels)
            else:
                twins = sum(b.nbytes for b in self.blocks) // 4  # 1 byte per weight
                if slots > 1 and (window_budget_bytes is None
                                  or window_budget_bytes >= need + twins):
                    self._route = RowRoute()
                self._load_q4()
        else:
            raise ConfigError(f"quantize={quantize!r} is not supported; use None or 'q4'")
        self._packed: dict[int, dict[str, Weight]] = {}
        if self.window is not None and slots > 1 and not self._int8_stream:
            self._pack_if_it_fits(window_budget_bytes)
        nkv, hd = share.n_kv_heads, config.head_dim
        self.k_cache = np.zeros((slots, config.layers, nkv, max_context, hd), dtype=F32)
        self.v_cache = np.zeros((slots, config.layers, nkv, max_context, hd), dtype=F32)
        self.rope = Rope(hd, config.rope, max_context)
        # one table per distinct RoPE (Gemma 3's local layers have their own theta)
        self._ropes = {r: Rope(hd, r, max_context) for r in (config.rope, config.local_rope)
                       if r is not None}
        self._nq = nkv * config.group_size

    def _load_q4(self) -> None:
        """Read every block once; matrices become 4-bit kernels, vectors stay fp32."""
        t0 = time.perf_counter()
        self._q4_bytes = 0
        for index, block in enumerate(self.blocks):
            weights: dict[str, Weight] = {}
            for name, arr in block_arrays(block, read_block(block.path, block.nbytes)).items():
                if arr.ndim == 2 and arr.shape[0] % Q4_BLOCK == 0:
                    op = Q4MatMul(arr, self._route)
                    weights[name] = op
                    self._q4_bytes += op.nbytes
                else:
                    weights[name] = arr.copy()
                    self._q4_bytes += arr.nbytes
            self._q4[index] = weights
            # the fp32 block and the kernels' build copies are freed: hand the pages back
            # now, so the loading peak stays near the serving size plus one block
            trim_heap()
        self._q4_load_s = time.perf_counter() - t0
        self._q4_uses = 0
        log.info("4-bit share ready: %.1f MB in %.1f s", self._q4_bytes / 1e6, self._q4_load_s)

    @property
    def packed(self) -> bool:
        """Whether the matrices have batching kernels (a batching share with room): fp32
        as `PackedMatMul`, 4-bit with int8 twins for prefill rows."""
        return bool(self._packed) or self._route is not None

    @property
    def packed_bytes(self) -> int:
        """Memory the batching kernels hold beyond the weights themselves."""
        fp32 = sum(w.packed_bytes for block in self._packed.values() for w in block.values()
                   if isinstance(w, PackedMatMul))
        return fp32 + sum(w.twin_bytes for block in self._q4.values() for w in block.values()
                          if isinstance(w, Q4MatMul))

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
    def _use(self, index: int) -> Iterator[Mapping[str, Weight]]:
        """The weights of block `index` for the duration of the `with` (declarative)."""
        packed = self._packed.get(index)
        if packed is not None:
            yield packed
            return
        if self.window is None:
            self._q4_uses += 1
            yield self._q4[index]
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

    def forward(
        self,
        token_ids: Sequence[int] | np.ndarray,
        positions: Sequence[int] | np.ndarray,
        allreduce: AllReduce,
        gather_logits: GatherLogits,
        *,
        last_only: bool = True,
        slot: int = 0,
    ) -> np.ndarray | None:
        """Run all layers for T tokens at `positions`; logits [T or 1, vocab] on the hub."""
        return self.forward_batch([Span(slot, token_ids, positions)], allreduce,
                                  gather_logits, last_only=last_only)

    def forward_batch(
        self,
        spans: Sequence[Span],
        allreduce: AllReduce,
        gather_logits: GatherLogits,
        *,
        last_only: bool = True,
        hidden: np.ndarray | None = None,
    ) -> np.ndarray | None:
        """Run all layers for every span's tokens at once; logits on the hub: one row per
        span (its last token) with `last_only`, else one per token, in span order.

        A pipeline stage (`share.layers`) runs its layers only: a stage after the first
        takes the previous stage's `hidden` [tokens, hidden] instead of embedding the ids
        (still given: they carry the spans' lengths and are checked), and a stage before
        the last returns the hidden state of every token instead of logits."""
        if not spans:
            raise GenerationError("a batch needs at least one sequence")
        checked = [self._check(span) for span in spans]
        if self._route is not None:
            self._route.begin([len(ids) for ids, _ in checked])
        slots = [span.slot for span in spans]
        if len(set(slots)) != len(slots):
            raise GenerationError(f"a batch names a KV slot twice: {slots}")
        c = self.config
        ids = np.concatenate([ids for ids, _ in checked])
        bounds = np.cumsum([0] + [len(i) for i, _ in checked])
        first, end = self.layer_range
        if hidden is None:
            if first > 0:
                raise GenerationError(f"the stage of layers {first}..{end - 1} takes the "
                                      "previous stage's hidden states, not token ids alone")
            x = np.array(self.embedding[ids], dtype=F32)
            if c.embed_scale != 1.0:  # Gemma: embeddings times sqrt(hidden)
                x *= F32(c.embed_scale)
        else:
            x = np.array(hidden, dtype=F32)
            if x.shape != (len(ids), c.hidden):
                raise GenerationError(f"a pipeline stage got hidden states of shape {x.shape}"
                                      f" for {len(ids)} tokens of width {c.hidden}")
        for layer in range(first, end):
            with self._use(2 * (layer - first)) as a:
                normed = rms_norm(x, _vec(a, "norm"), c.rms_norm_eps)
                partial = self._attention(layer, normed, a, slots, checked, bounds)
                bias = _vec(a, "bo").copy() if "bo" in a else None
                post = _vec(a, "post_norm").copy() if "post_norm" in a else None
            summed = allreduce(partial)
            if post is not None:  # Gemma normalises the summed attention output
                out = summed if bias is None else summed + bias
                x += rms_norm(out, post, c.rms_norm_eps)
            else:
                x += summed
                if bias is not None:
                    x += bias
            with self._use(2 * (layer - first) + 1) as m:
                partial = self._mlp(rms_norm(x, _vec(m, "norm"), c.rms_norm_eps), m, bounds)
                post = _vec(m, "post_norm").copy() if "post_norm" in m else None
            summed = allreduce(partial)
            x += summed if post is None else rms_norm(summed, post, c.rms_norm_eps)
        if end < c.layers:  # a stage before the last hands its hidden state on
            return x
        xs = x[bounds[1:] - 1] if last_only else x
        parts = []
        normed_out: np.ndarray | None = None  # every chunk carries the same final norm
        for index in range(2 * (end - first), len(self.blocks)):  # the LM head's chunks
            with self._use(index) as h:
                if "lm_t" in h:
                    if normed_out is None:
                        normed_out = rms_norm(xs, _vec(h, "norm"), c.rms_norm_eps)
                    parts.append(_mm(normed_out, h["lm_t"]))
        local = np.concatenate(parts, axis=1) if parts else np.zeros((xs.shape[0], 0), F32)
        return gather_logits(soft_cap(local, c.final_softcap))  # elementwise: per rows

    def _check(self, span: Span) -> tuple[np.ndarray, np.ndarray]:
        """A span's ids and positions as arrays, with every bound checked."""
        c = self.config
        ids = np.asarray(span.token_ids, dtype=np.int64)
        pos = np.asarray(span.positions, dtype=np.int64)
        if ids.ndim != 1 or ids.shape != pos.shape or ids.size == 0:
            raise GenerationError(
                "token_ids and positions must be equal-length, non-empty 1-D sequences"
            )
        if ids.min() < 0 or ids.max() >= c.vocab:
            raise GenerationError(
                f"token ids must lie in [0, {c.vocab}); got {int(ids.min())}..{int(ids.max())}"
            )
        if pos.min() < 0 or pos.max() >= self.max_context:
            raise GenerationError(
                f"position {int(pos.max())} is beyond the context of {self.max_context} tokens; "
                "deploy with a larger max_context or shorten the prompt"
            )
        if not 0 <= span.slot < self.slots:
            raise GenerationError(f"KV slot {span.slot} does not exist: this share has "
                                  f"{self.slots} (deploy with a larger max_batch)")
        return ids, pos

    def _attention(
        self, layer: int, x: np.ndarray, a: Mapping[str, Weight], slots: Sequence[int],
        spans: Sequence[tuple[np.ndarray, np.ndarray]], bounds: np.ndarray,
    ) -> np.ndarray:
        t = x.shape[0]
        if "wqkv_t" not in a:
            return np.zeros((t, self.config.hidden), dtype=F32)
        c = self.config
        hd, nq, nkv = c.head_dim, self._nq, self.share.n_kv_heads
        qkv = _mm(x, a["wqkv_t"])  # every sequence's tokens in one product
        if "bqkv" in a:
            qkv += _vec(a, "bqkv")
        rope, window = self._ropes[c.layer_rope(layer)], c.layer_window(layer)
        outs = []
        for slot, (_, pos), lo, hi in zip(slots, spans, bounds[:-1], bounds[1:], strict=True):
            part = qkv[lo:hi]
            n = hi - lo
            q = part[:, : nq * hd].reshape(n, nq, hd)
            k = part[:, nq * hd : (nq + nkv) * hd].reshape(n, nkv, hd)
            if c.qk_norm:  # Qwen3, Gemma 3: RMSNorm over each head before RoPE
                q = rms_norm(q, _vec(a, "q_norm"), c.rms_norm_eps)
                k = rms_norm(k, _vec(a, "k_norm"), c.rms_norm_eps)
            q = rope.apply(q, pos)
            k = rope.apply(k, pos)
            v = part[:, (nq + nkv) * hd :].reshape(n, nkv, hd)
            kc, vc = self.k_cache[slot, layer], self.v_cache[slot, layer]
            kc[:, pos] = k.transpose(1, 0, 2)
            vc[:, pos] = v.transpose(1, 0, 2)
            length = int(pos.max()) + 1
            outs.append(attention(
                q.reshape(n, nkv, c.group_size, hd),
                kc[:, :length],
                vc[:, :length],
                pos,
                window,
                scale=c.attention_scale,
                softcap=c.attn_softcap,
            ))
        out = outs[0] if len(outs) == 1 else np.concatenate(outs, axis=0)
        return _mm(out, a["wo_t"])

    def _mlp(self, x: np.ndarray, m: Mapping[str, Weight], bounds: np.ndarray) -> np.ndarray:
        """Partial MLP output: this share's columns, or its experts (`moe.py`)."""
        return feed_forward(x, m, self.config, self.share.experts, _mm, self._route,
                            [int(n) for n in np.diff(bounds)])

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


def _mm(x: np.ndarray, w: Weight) -> np.ndarray:
    """x @ w for an fp32 matrix, a packed fp32 kernel or a 4-bit kernel."""
    if isinstance(w, Q4MatMul | PackedMatMul | Int8Streamed):
        return w(x)
    out: np.ndarray = x @ w
    return out


def _vec(weights: Mapping[str, Weight], name: str) -> np.ndarray:
    w = weights[name]
    assert isinstance(w, np.ndarray), name
    return w


__all__ = ["AllReduce", "GatherLogits", "Span", "TensorWorker", "q4_load_bytes", "stage_blocks"]
