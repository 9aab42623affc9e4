"""A share's arrays, cut from a checkpoint: what `slices.convert_share` writes.

Why apart from `slices.py`: that module owns the cache's file format (aligned block
files, the manifest, hashing, reuse); this one knows the checkpoint's names and how a
share is cut from them — its KV-head groups with their query heads and its intermediate
columns of every layer (q/k/v fused into one [in, out] matrix, gate/up into another,
whether the checkpoint stores them apart or fused, as Phi-3 does), a mixture of
experts' router and the share's experts, norms as the factor the kernel multiplies by
(Gemma's 1 + w added once), and the LM head's vocabulary rows in chunks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edge_runtime.llm.checkpoint import Checkpoint
from partitioner.tensor import TensorShare


def _projections(ckpt: Checkpoint, p: str) -> tuple[np.ndarray, ...]:
    """Layer `p`'s q, k, v, gate and up matrices as [out, in] views, whether the
    checkpoint stores them apart or fused (Phi-3's qkv_proj rows are all q heads, then
    all k heads, then all v heads; gate_up_proj rows are all gate, then all up). A
    mixture of experts has no dense MLP: its gate and up are empty."""
    c = ckpt.config
    t = ckpt.tensor
    if c.experts:
        none = np.zeros((0, c.hidden), dtype=np.float32)
        return (t(p + "self_attn.q_proj.weight"), t(p + "self_attn.k_proj.weight"),
                t(p + "self_attn.v_proj.weight"), none, none)
    if not c.fused_projections:
        return (t(p + "self_attn.q_proj.weight"), t(p + "self_attn.k_proj.weight"),
                t(p + "self_attn.v_proj.weight"), t(p + "mlp.gate_proj.weight"),
                t(p + "mlp.up_proj.weight"))
    nq, nkv = c.heads * c.head_dim, c.kv_heads * c.head_dim
    qkv = t(p + "self_attn.qkv_proj.weight")
    gate_up = t(p + "mlp.gate_up_proj.weight")
    return (qkv[:nq], qkv[nq : nq + nkv], qkv[nq + nkv :], gate_up[: c.intermediate],
            gate_up[c.intermediate :])


def _expert_arrays(ckpt: Checkpoint, share: TensorShare, layer: int) -> dict[str, np.ndarray]:
    """Layer `layer`'s router (whole, flat) and the share's experts, transposed."""
    c = ckpt.config
    out = {"router": np.ascontiguousarray(ckpt.tensor(c.router_tensor(layer)).T).reshape(-1)}
    for e in range(*share.experts):
        gate, up, down = (ckpt.tensor(n) for n in c.expert_tensors(layer, e))
        out[f"expert{e}.wgu_t"] = np.concatenate([gate, up], axis=0).T
        out[f"expert{e}.wdown_t"] = down.T
    return out


def _norm(ckpt: Checkpoint, name: str) -> np.ndarray:
    """An RMSNorm weight as the engine multiplies by it: Gemma's (1 + w) is added here,
    once, in fp32 as transformers does, so every kernel multiplies by the stored weight."""
    w = ckpt.tensor(name)
    offset = ckpt.config.norm_offset
    return w + np.float32(offset) if offset else w


def layer_arrays(
    ckpt: Checkpoint, share: TensorShare, i: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Layer i's attention and MLP blocks of `share`: its KV-head groups (with their
    query heads) and its intermediate columns, plus every norm (replicated)."""
    c = ckpt.config
    t = ckpt.tensor
    p = f"model.layers.{i}."
    hd = c.head_dim
    k0, k1 = share.kv_heads
    q_rows = slice(k0 * c.group_size * hd, k1 * c.group_size * hd)
    kv_rows = slice(k0 * hd, k1 * hd)
    wq, wk, wv, gate, up = _projections(ckpt, p)
    attn: dict[str, np.ndarray] = {"norm": _norm(ckpt, p + "input_layernorm.weight")}
    if k1 > k0:
        attn["wqkv_t"] = np.concatenate([wq[q_rows], wk[kv_rows], wv[kv_rows]], axis=0).T
        if c.qkv_bias:
            attn["bqkv"] = np.concatenate(
                [
                    t(p + "self_attn.q_proj.bias")[q_rows],
                    t(p + "self_attn.k_proj.bias")[kv_rows],
                    t(p + "self_attn.v_proj.bias")[kv_rows],
                ]
            )
        attn["wo_t"] = t(p + "self_attn.o_proj.weight")[:, q_rows].T
        if c.qk_norm:
            attn["q_norm"] = _norm(ckpt, p + "self_attn.q_norm.weight")
            attn["k_norm"] = _norm(ckpt, p + "self_attn.k_norm.weight")
    if c.o_bias:
        attn["bo"] = t(p + "self_attn.o_proj.bias")
    if c.sandwich_norms:  # Gemma: this norm is of the attention output
        attn["post_norm"] = _norm(ckpt, p + "post_attention_layernorm.weight")
    c0, c1 = share.mlp_columns
    pre_mlp = "pre_feedforward_layernorm" if c.sandwich_norms else "post_attention_layernorm"
    mlp: dict[str, np.ndarray] = {"norm": _norm(ckpt, p + pre_mlp + ".weight")}
    if c.experts:
        mlp.update(_expert_arrays(ckpt, share, i))
    elif c1 > c0:
        mlp["wgu_t"] = np.concatenate([gate[c0:c1], up[c0:c1]], axis=0).T
        mlp["wdown_t"] = t(p + "mlp.down_proj.weight")[:, c0:c1].T
    if c.sandwich_norms:
        mlp["post_norm"] = _norm(ckpt, p + "post_feedforward_layernorm.weight")
    return attn, mlp


def head_chunks(ckpt: Checkpoint, share: TensorShare, largest: int) -> list[dict[str, Any]]:
    """The share's LM head rows (the embedding's when tied) with the final norm, in row
    chunks no larger than the biggest layer block (`largest` bytes): the window's least
    useful size is set by the layers, not by the vocabulary."""
    v0, v1 = share.vocab_rows
    rows_per_chunk = max(1, largest // (ckpt.config.hidden * 4))
    head, norm = ckpt.tensor(ckpt.lm_head_name()), _norm(ckpt, "model.norm.weight")
    chunks = []
    for r0 in list(range(v0, v1, rows_per_chunk)) or [v0]:
        r1 = min(v1, r0 + rows_per_chunk)
        chunk: dict[str, np.ndarray] = {"norm": norm}
        if r1 > r0:
            chunk["lm_t"] = head[r0:r1].T
        chunks.append(chunk)
    return chunks


__all__ = ["head_chunks", "layer_arrays"]
