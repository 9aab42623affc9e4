"""The numeric kernels of a decoder layer (Llama family, Qwen3, Gemma 2/3, Phi-3), in fp32 numpy.

Why numpy: decode is a vector times a matrix per weight, bound by memory bandwidth;
numpy's BLAS streams fp32 weights at about 17 GB/s on one core here (NOTES.md), the
same as onnxruntime's fp32 MatMul, without a graph per layer. Each function matches
the Hugging Face reference (`modeling_llama`, `modeling_gemma2`, ...) operation for
operation, in fp32.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from edge_runtime.llm.config import RopeConfig

log = logging.getLogger(__name__)

F32 = np.float32


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """weight * x / sqrt(mean(x²) + eps), row-wise (HF `LlamaRMSNorm`)."""
    var = np.mean(np.square(x), axis=-1, keepdims=True)
    out: np.ndarray = (x * (1.0 / np.sqrt(var + F32(eps)))).astype(F32, copy=False) * weight
    return out


def silu_mul(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """silu(gate) * up; sigmoid via tanh so large negative inputs cannot overflow exp."""
    sig = np.tanh(gate * F32(0.5))
    sig += F32(1.0)
    sig *= F32(0.5)
    sig *= gate
    sig *= up
    return sig


def gelu_tanh_mul(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """gelu(gate, approximate="tanh") * up: Gemma's GeGLU (`gelu_pytorch_tanh`)."""
    inner: np.ndarray = gate * gate
    inner *= F32(0.044715)
    inner += F32(1.0)
    inner *= gate
    inner *= F32(math.sqrt(2.0 / math.pi))
    np.tanh(inner, out=inner)
    inner += F32(1.0)
    inner *= F32(0.5)
    inner *= gate
    inner *= up
    return inner


GATED_ACTIVATIONS = {"silu": silu_mul, "gelu_pytorch_tanh": gelu_tanh_mul}


def soft_cap(x: np.ndarray, cap: float | None) -> np.ndarray:
    """cap * tanh(x / cap) in place (Gemma 2's attention and final-logit soft-capping)."""
    if cap is None:
        return x
    x *= F32(1.0 / cap)
    np.tanh(x, out=x)
    x *= F32(cap)
    return x


def inv_freq(head_dim: int, rope: RopeConfig) -> np.ndarray:
    """Rotary inverse frequencies, with HF's `linear` and `llama3` scaling."""
    inv = 1.0 / (rope.theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    if rope.rope_type == "linear":
        inv = inv / rope.factor
    elif rope.rope_type == "llama3":
        old = rope.original_max_position_embeddings
        low_wavelen = old / rope.low_freq_factor
        high_wavelen = old / rope.high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / rope.factor, inv)
        smooth = (old / wavelen - rope.low_freq_factor) / (
            rope.high_freq_factor - rope.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        inv = np.where(medium, smoothed, scaled)
    return inv.astype(F32)


class Rope:
    """cos/sin tables for every position up to `max_positions`, computed once."""

    def __init__(self, head_dim: int, rope: RopeConfig, max_positions: int) -> None:
        freqs = np.outer(np.arange(max_positions, dtype=F32), inv_freq(head_dim, rope)).astype(F32)
        emb = np.concatenate([freqs, freqs], axis=-1)
        self.cos = np.cos(emb).astype(F32)
        self.sin = np.sin(emb).astype(F32)


def split_qkv(qkv: np.ndarray, q_heads: int, kv_heads: int, head_dim: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A fused projection's rows [T, (q_heads + 2·kv_heads)·head_dim] as views q [T, q_heads,
    head_dim], k and v [T, kv_heads, head_dim]."""
    t, q_end, k_end = qkv.shape[0], q_heads * head_dim, (q_heads + kv_heads) * head_dim
    return (qkv[:, :q_end].reshape(t, q_heads, head_dim),
            qkv[:, q_end:k_end].reshape(t, kv_heads, head_dim),
            qkv[:, k_end:].reshape(t, kv_heads, head_dim))


def rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """x [T, heads, head_dim] rotated by each row's cos/sin [T, head_dim] (`Rope` rows):
    x * cos + rotate_half(x) * sin, as HF computes it (a fused 4-bit segment computes
    the same products, `q4_segments`)."""
    h = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., h:], x[..., :h]], axis=-1)
    out: np.ndarray = x * cos[:, None, :] + rotated * sin[:, None, :]
    return out


def attention(
    q: np.ndarray,
    k_cache: np.ndarray,
    v_cache: np.ndarray,
    positions: np.ndarray,
    sliding_window: int | None,
    *,
    scale: float | None = None,
    softcap: float | None = None,
) -> np.ndarray:
    """Causal GQA attention of T new queries against the first L cached keys.

    q: [T, kv, g, d]; k_cache, v_cache: [kv, L, d] (L = last position + 1);
    returns [T, kv * g * d] in head order (head h uses KV head h // g, as in HF).
    Scores are q.k times `scale` (default 1/sqrt(d)), then soft-capped (`softcap`),
    then masked, as in HF's eager attention.
    """
    t, kv, g, d = q.shape
    length = k_cache.shape[1]
    qg = q.transpose(1, 2, 0, 3).reshape(kv, g * t, d)
    scores = np.matmul(qg, k_cache.transpose(0, 2, 1))  # [kv, g*T, L]
    scores *= F32(1.0 / math.sqrt(d) if scale is None else scale)
    soft_cap(scores, softcap)
    if t > 1 or sliding_window is not None:
        keys = np.arange(length)
        masked = keys[None, :] > positions[:, None]
        if sliding_window is not None:
            masked |= keys[None, :] <= positions[:, None] - sliding_window
        mask = np.where(masked, F32(-np.inf), F32(0.0))
        scores = scores.reshape(kv, g, t, length)
        scores += mask
        scores = scores.reshape(kv, g * t, length)
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    out = np.matmul(scores, v_cache)  # [kv, g*T, d]
    result: np.ndarray = out.reshape(kv, g, t, d).transpose(2, 0, 1, 3).reshape(t, kv * g * d)
    return result


__all__ = ["GATED_ACTIVATIONS", "Rope", "attention", "gelu_tanh_mul", "inv_freq", "rms_norm",
           "rotate", "silu_mul", "soft_cap", "split_qkv"]
