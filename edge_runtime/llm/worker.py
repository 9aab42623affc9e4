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

Where the weights live while it serves — pinned or streamed through the sliding window,
packed batching kernels, 4-bit kernels, int8 blocks streamed — is `share_weights.py`;
this module asks it for one block at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from edge_runtime.errors import ConfigError, GenerationError
from edge_runtime.llm.config import LlmConfig
from edge_runtime.llm.kernels import Rope, attention, rms_norm, rotate, soft_cap, split_qkv
from edge_runtime.llm.moe import feed_forward
from edge_runtime.llm.q4_segments import Q4AttentionIn, Q4FeedForward, SegmentShape, fusable
from edge_runtime.llm.residency import DISK_READ_BPS, ResidencyPlan
from edge_runtime.llm.share_weights import ShareWeights, Weight, stage_blocks
from edge_runtime.llm.share_weights import matmul as _mm
from edge_runtime.llm.share_weights import vector as _vec
from edge_runtime.llm.slices import SliceSet
from edge_runtime.llm.window import LayerWindow, WindowStats
from partitioner.tensor import TensorShare

F32 = np.float32
AllReduce = Callable[[np.ndarray], np.ndarray]
# Takes this worker's logits columns [T, rows]; returns [T, vocab] on the hub, None elsewhere.
GatherLogits = Callable[[np.ndarray], np.ndarray | None]


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
        progress: Callable[[int, int], None] | None = None,
        fused_segments: bool = True,
    ) -> None:
        """`fused_segments`: a resident "q4" share runs each layer's norm, projections and
        element-wise work as two onnxruntime graphs where the model allows
        (`q4_segments`); False keeps one kernel per matrix (to compare the two).
        `stream_quantized`: a "q4" share whose budget cannot hold its 4-bit weights
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
        self._nq = share.n_kv_heads * config.group_size
        segments = SegmentShape(self._nq, share.n_kv_heads, config.head_dim,
                                config.rms_norm_eps) \
            if fused_segments and quantize == "q4" and fusable(config) else None
        # where the blocks live while serving (resident, windowed, packed, 4-bit, int8)
        self.weights = ShareWeights(self.blocks, slices.directory,
                                    budget=window_budget_bytes, quantize=quantize,
                                    slots=slots, stream_quantized=stream_quantized,
                                    read_bps=self._read_bps, progress=progress,
                                    segments=segments)
        nkv, hd = share.n_kv_heads, config.head_dim
        self.k_cache = np.zeros((slots, config.layers, nkv, max_context, hd), dtype=F32)
        self.v_cache = np.zeros((slots, config.layers, nkv, max_context, hd), dtype=F32)
        # one table per distinct RoPE (Gemma 3's local layers have their own theta)
        self._ropes = {r: Rope(hd, r, max_context) for r in (config.rope, config.local_rope)
                       if r is not None}

    @property
    def window(self) -> LayerWindow | None:
        """The sliding window of a streamed (or pinned fp32) share; None for 4-bit."""
        return self.weights.window

    @property
    def residency(self) -> ResidencyPlan | None:
        """Which blocks the window keeps for good and what streaming costs per token."""
        return self.weights.residency

    @property
    def fused(self) -> bool:
        """Whether the layers run as fused 4-bit segments (`ShareWeights.fused`)."""
        return self.weights.fused

    @property
    def packed(self) -> bool:
        """Whether the matrices have batching kernels (`ShareWeights.packed`)."""
        return self.weights.packed

    @property
    def packed_bytes(self) -> int:
        """Memory the batching kernels hold beyond the weights themselves."""
        return self.weights.packed_bytes

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
        route = self.weights.route
        if route is not None:
            route.begin([len(ids) for ids, _ in checked])
        slots = [span.slot for span in spans]
        if len(set(slots)) != len(slots):
            raise GenerationError(f"a batch names a KV slot twice: {slots}")
        c = self.config
        ids = np.concatenate([ids for ids, _ in checked])
        positions = np.concatenate([pos for _, pos in checked])
        # each RoPE's cos/sin rows of this step's positions, gathered once for all layers
        turns = {r: (rope.cos[positions], rope.sin[positions]) for r, rope in self._ropes.items()}
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
            with self.weights.use(2 * (layer - first)) as a:
                partial = self._attention(layer, x, a, turns[c.layer_rope(layer)], slots,
                                          checked, bounds)
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
            with self.weights.use(2 * (layer - first) + 1) as m:
                fused = m.get("feed_forward")
                partial = fused(x) if isinstance(fused, Q4FeedForward) else \
                    self._mlp(rms_norm(x, _vec(m, "norm"), c.rms_norm_eps), m, bounds)
                post = _vec(m, "post_norm").copy() if "post_norm" in m else None
            summed = allreduce(partial)
            x += summed if post is None else rms_norm(summed, post, c.rms_norm_eps)
        if end < c.layers:  # a stage before the last hands its hidden state on
            return x
        xs = x[bounds[1:] - 1] if last_only else x
        parts = []
        normed_out: np.ndarray | None = None  # every chunk carries the same final norm
        for index in range(2 * (end - first), len(self.blocks)):  # the LM head's chunks
            with self.weights.use(index) as h:
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
        self, layer: int, x: np.ndarray, a: Mapping[str, Weight],
        turn: tuple[np.ndarray, np.ndarray], slots: Sequence[int],
        spans: Sequence[tuple[np.ndarray, np.ndarray]], bounds: np.ndarray,
    ) -> np.ndarray:
        """This share's partial attention output for the residual rows `x`; `turn`: the
        layer's RoPE cos/sin rows of the step's positions."""
        fused = a.get("attention_in")
        if isinstance(fused, Q4AttentionIn):
            q, k, v = fused(x, *turn)
        elif "wqkv_t" in a:
            q, k, v = self._qkv(rms_norm(x, _vec(a, "norm"), self.config.rms_norm_eps), a,
                                turn)
        else:  # a share with no heads of this layer
            return np.zeros((x.shape[0], self.config.hidden), dtype=F32)
        c = self.config
        window = c.layer_window(layer)
        outs = []
        for slot, (_, pos), lo, hi in zip(slots, spans, bounds[:-1], bounds[1:], strict=True):
            n = hi - lo
            kc, vc = self.k_cache[slot, layer], self.v_cache[slot, layer]
            kc[:, pos] = k[lo:hi].transpose(1, 0, 2)
            vc[:, pos] = v[lo:hi].transpose(1, 0, 2)
            length = int(pos.max()) + 1
            outs.append(attention(
                q[lo:hi].reshape(n, self.share.n_kv_heads, c.group_size, c.head_dim),
                kc[:, :length],
                vc[:, :length],
                pos,
                window,
                scale=c.attention_scale,
                softcap=c.attn_softcap,
            ))
        out = outs[0] if len(outs) == 1 else np.concatenate(outs, axis=0)
        return _mm(out, a["wo_t"])

    def _qkv(self, x: np.ndarray, a: Mapping[str, Weight], turn: tuple[np.ndarray, np.ndarray]
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every row's q, k (normed per head where the model does, then rotated) and v,
        from the normalised rows `x`: one product for every sequence's tokens."""
        c = self.config
        qkv = _mm(x, a["wqkv_t"])
        if "bqkv" in a:
            qkv += _vec(a, "bqkv")
        q, k, v = split_qkv(qkv, self._nq, self.share.n_kv_heads, c.head_dim)
        if c.qk_norm:  # Qwen3, Gemma 3: RMSNorm over each head before RoPE
            q = rms_norm(q, _vec(a, "q_norm"), c.rms_norm_eps)
            k = rms_norm(k, _vec(a, "k_norm"), c.rms_norm_eps)
        return rotate(q, *turn), rotate(k, *turn), v

    def _mlp(self, x: np.ndarray, m: Mapping[str, Weight], bounds: np.ndarray) -> np.ndarray:
        """Partial MLP output: this share's columns, or its experts (`moe.py`)."""
        return feed_forward(x, m, self.config, self.share.experts, _mm, self.weights.route,
                            [int(n) for n in np.diff(bounds)])

    def stats(self) -> WindowStats:
        return self.weights.stats()

    def close(self) -> None:
        self.weights.close()


__all__ = ["AllReduce", "GatherLogits", "Span", "TensorWorker"]
