"""`TensorWorker`: one device's part of the tensor-parallel forward pass.

Why a worker with injected collectives: the same code runs in an agent process (where
`allreduce` is the transports' star allreduce and `gather_logits` a gather to the hub)
and in one process with N threads (an in-process sum-and-barrier, `local.py`), so the
numerics of the split are tested without sockets and the agent adds only transport.

Per layer, each worker computes its partial attention output (its KV-head groups) and
its partial MLP output (its intermediate columns); the allreduce after each sums the
partials, and every worker adds the sum to its own replicated residual. Norms, RoPE and
the residual stream are replicated; the o_proj bias (when present) is added once, after
the sum. The KV cache holds only this worker's heads, preallocated for `max_context`,
with one slot per sequence that may be decoded at once (`slots`).

Batching: `forward_batch` runs several independent sequences in one pass. Their tokens
are stacked, so every matrix product (and every allreduce) is done once for all of
them — decode reads the weights once for B tokens instead of B times; only attention
runs per sequence, over that sequence's own KV slot and positions. A sequence's output
does not depend on what it is batched with.

`quantize="q4"` turns every matrix of a resident share into a 4-bit onnxruntime kernel
(`quant.Q4MatMul`); norms, biases and the KV cache stay fp32.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from edge_runtime.errors import ConfigError, GenerationError
from edge_runtime.llm.config import LlmConfig
from edge_runtime.llm.kernels import Rope, attention, rms_norm, silu_mul
from edge_runtime.llm.packed import PackedMatMul
from edge_runtime.llm.quant import BLOCK as Q4_BLOCK
from edge_runtime.llm.quant import Q4MatMul
from edge_runtime.llm.slices import SliceSet, block_arrays
from edge_runtime.llm.window import LayerWindow, WindowStats, read_block
from partitioner.tensor import TensorShare

log = logging.getLogger(__name__)

F32 = np.float32
AllReduce = Callable[[np.ndarray], np.ndarray]
# Takes this worker's logits columns [T, rows]; returns [T, vocab] on the hub, None elsewhere.
GatherLogits = Callable[[np.ndarray], np.ndarray | None]
Weight = np.ndarray | Q4MatMul | PackedMatMul


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
    ) -> None:
        if slots < 1:
            raise ConfigError(f"slots must be at least 1, got {slots}")
        self.config = config
        self.share = share
        self.max_context = max_context
        self.slots = slots
        self.embedding = slices.embedding_table()
        self.blocks = slices.blocks
        self._views: dict[int, dict[str, np.ndarray]] = {}
        self._q4: dict[int, dict[str, Weight]] = {}
        self.window: LayerWindow | None = None
        if quantize is None:
            self.window = LayerWindow(slices.blocks, window_budget_bytes)
        elif quantize == "q4":
            # 4-bit codes + fp32 scales take 0.625 of 4 bytes per weight; 1/4 leaves room
            # for the fp32 norms, biases and one block being converted.
            need = sum(b.nbytes for b in slices.blocks) // 4
            if window_budget_bytes is not None and window_budget_bytes < need:
                raise ConfigError(
                    f"4-bit weights serve resident shares only: this share needs "
                    f"{need / 1e6:.1f} MB for weights but the budget leaves "
                    f"{window_budget_bytes / 1e6:.1f} MB; raise the memory budget or use "
                    "fp32 weights with a sliding window"
                )
            self._load_q4()
        else:
            raise ConfigError(f"quantize={quantize!r} is not supported; use None or 'q4'")
        self._packed: dict[int, dict[str, Weight]] = {}
        if self.window is not None and slots > 1:
            self._pack_if_it_fits(window_budget_bytes)
        nkv, hd = share.n_kv_heads, config.head_dim
        self.k_cache = np.zeros((slots, config.layers, nkv, max_context, hd), dtype=F32)
        self.v_cache = np.zeros((slots, config.layers, nkv, max_context, hd), dtype=F32)
        self.rope = Rope(hd, config.rope, max_context)
        self._nq = nkv * config.group_size

    def _load_q4(self) -> None:
        """Read every block once; matrices become 4-bit kernels, vectors stay fp32."""
        t0 = time.perf_counter()
        self._q4_bytes = 0
        for index, block in enumerate(self.blocks):
            weights: dict[str, Weight] = {}
            for name, arr in block_arrays(block, read_block(block.path, block.nbytes)).items():
                if arr.ndim == 2 and arr.shape[0] % Q4_BLOCK == 0:
                    op = Q4MatMul(arr)
                    weights[name] = op
                    self._q4_bytes += op.nbytes
                else:
                    weights[name] = arr.copy()
                    self._q4_bytes += arr.nbytes
            self._q4[index] = weights
        self._q4_load_s = time.perf_counter() - t0
        self._q4_uses = 0
        log.info("4-bit share ready: %.1f MB in %.1f s", self._q4_bytes / 1e6, self._q4_load_s)

    @property
    def packed(self) -> bool:
        """Whether the matrices run as `PackedMatMul` (a batching share with room)."""
        return bool(self._packed)

    @property
    def packed_bytes(self) -> int:
        """Memory the packed kernels hold beyond the weights themselves."""
        return sum(w.packed_bytes for block in self._packed.values() for w in block.values()
                   if isinstance(w, PackedMatMul))

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

    def _arrays(self, index: int, buf: np.ndarray) -> dict[str, np.ndarray]:
        assert self.window is not None
        if not self.window.resident:
            return block_arrays(self.blocks[index], buf)
        views = self._views.get(index)
        if views is None:
            views = self._views[index] = block_arrays(self.blocks[index], buf)
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
    ) -> np.ndarray | None:
        """Run all layers for every span's tokens at once; logits on the hub: one row per
        span (its last token) with `last_only`, else one per token, in span order."""
        if not spans:
            raise GenerationError("a batch needs at least one sequence")
        checked = [self._check(span) for span in spans]
        slots = [span.slot for span in spans]
        if len(set(slots)) != len(slots):
            raise GenerationError(f"a batch names a KV slot twice: {slots}")
        c = self.config
        ids = np.concatenate([ids for ids, _ in checked])
        bounds = np.cumsum([0] + [len(i) for i, _ in checked])
        x = np.array(self.embedding[ids], dtype=F32)
        for layer in range(c.layers):
            with self._use(2 * layer) as a:
                normed = rms_norm(x, _vec(a, "norm"), c.rms_norm_eps)
                partial = self._attention(layer, normed, a, slots, checked, bounds)
                bias = _vec(a, "bo").copy() if "bo" in a else None
            summed = allreduce(partial)
            x += summed
            if bias is not None:
                x += bias
            with self._use(2 * layer + 1) as m:
                partial = self._mlp(rms_norm(x, _vec(m, "norm"), c.rms_norm_eps), m)
            x += allreduce(partial)
        xs = x[bounds[1:] - 1] if last_only else x
        parts = []
        normed_out: np.ndarray | None = None  # every chunk carries the same final norm
        for index in range(2 * c.layers, len(self.blocks)):  # the LM head's row chunks
            with self._use(index) as h:
                if "lm_t" in h:
                    if normed_out is None:
                        normed_out = rms_norm(xs, _vec(h, "norm"), c.rms_norm_eps)
                    parts.append(_mm(normed_out, h["lm_t"]))
        local = np.concatenate(parts, axis=1) if parts else np.zeros((xs.shape[0], 0), F32)
        return gather_logits(local)

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
        outs = []
        for slot, (_, pos), lo, hi in zip(slots, spans, bounds[:-1], bounds[1:], strict=True):
            part = qkv[lo:hi]
            n = hi - lo
            q = self.rope.apply(part[:, : nq * hd].reshape(n, nq, hd), pos)
            k = self.rope.apply(part[:, nq * hd : (nq + nkv) * hd].reshape(n, nkv, hd), pos)
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
                c.sliding_window,
            ))
        out = outs[0] if len(outs) == 1 else np.concatenate(outs, axis=0)
        return _mm(out, a["wo_t"])

    def _mlp(self, x: np.ndarray, m: Mapping[str, Weight]) -> np.ndarray:
        if "wgu_t" not in m:
            return np.zeros_like(x)
        gu = _mm(x, m["wgu_t"])
        cols = gu.shape[1] // 2
        act = silu_mul(gu[:, :cols], gu[:, cols:])
        return _mm(act, m["wdown_t"])

    def stats(self) -> WindowStats:
        if self.window is not None:
            return self.window.stats()
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


def _mm(x: np.ndarray, w: Weight) -> np.ndarray:
    """x @ w for an fp32 matrix, a packed fp32 kernel or a 4-bit kernel."""
    if isinstance(w, Q4MatMul | PackedMatMul):
        return w(x)
    out: np.ndarray = x @ w
    return out


def _vec(weights: Mapping[str, Weight], name: str) -> np.ndarray:
    w = weights[name]
    assert isinstance(w, np.ndarray), name
    return w


__all__ = ["AllReduce", "GatherLogits", "Span", "TensorWorker"]
