"""GGUF tensors → Hugging Face tensors: names, llama.cpp's layout changes undone, values.

Why each step:
- Names: llama.cpp renames every tensor (`blk.3.attn_q.weight`); the engine and
  `Checkpoint` read HF names (`model.layers.3.self_attn.q_proj.weight`). A tensor with
  no HF counterpart is refused by name, never dropped silently.
- Llama q/k rows: llama.cpp's converter permutes the rows of q_proj and k_proj (weights
  and biases) of `llama` files so its rotary kernel can rotate adjacent pairs; HF rotates
  halves. The permutation is undone here, as transformers' GGUF loader does. Qwen,
  Gemma and Phi files are not permuted (llama.cpp runs them with NeoX-style RoPE).
- Gemma norms: llama.cpp stores `w + 1` for every RMSNorm weight (HF computes
  `x * (1 + w)`); 1 is subtracted back in fp32.
- Values: F32, F16 and BF16 are copied bit for bit (a row permutation is exact); block
  types (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K..Q6_K) are dequantized with `gguf.quants` to
  fp32, row chunks at a time so a large embedding never sits in memory whole. fp32 and
  not fp16: a Q8_0 value is int8 × an f16 scale, which needs up to 18 significant bits.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_runtime.errors import CheckpointError
from edge_runtime.llm.gguf.config_map import ROPE_FREQS
from edge_runtime.llm.gguf.reader import GgufFile, GgufTensor

# ggml types copied as they are: GGUF type name -> safetensors dtype tag.
PLAIN_TYPES = {"F32": "F32", "F16": "F16", "BF16": "BF16"}
# block (quantized) types dequantized to fp32 through gguf.quants.
BLOCK_TYPES = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
SUPPORTED_TYPES = (*PLAIN_TYPES, *BLOCK_TYPES)
# rows dequantized at once: bounds the fp32 working set to ~CHUNK_ELEMENTS * 4 bytes
CHUNK_ELEMENTS = 1 << 22

_TOP = {"token_embd.weight": "model.embed_tokens.weight",
        "output_norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight"}
_LAYER = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
    "attn_qkv": "self_attn.qkv_proj",
    "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
# Gemma 2/3 have four norms per layer; llama.cpp's `ffn_norm` is HF's pre-feedforward one.
_GEMMA_LAYER = {**_LAYER, "ffn_norm": "pre_feedforward_layernorm",
                "post_attention_norm": "post_attention_layernorm",
                "post_ffw_norm": "post_feedforward_layernorm"}
# Phi-3 keeps gate and up fused in one matrix, stored by llama.cpp as ffn_up.
_PHI3_LAYER = {**_LAYER, "ffn_up": "mlp.gate_up_proj"}
_LAYER_MAPS = {"gemma2": _GEMMA_LAYER, "gemma3": _GEMMA_LAYER, "phi3": _PHI3_LAYER}
_BLOCK = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
# consumed by the config mapping (RoPE factors), not weights
_NOT_WEIGHTS = (ROPE_FREQS,)


@dataclass(frozen=True)
class TensorJob:
    """How one HF tensor is made: from which GGUF tensor, in which dtype, with what fix."""

    hf_name: str
    source: GgufTensor
    dtype: str  # safetensors dtype tag of the output: F32, F16 or BF16
    rows: np.ndarray | None = None  # output row i = source row rows[i] (undone permutation)
    minus_one: bool = False  # Gemma norm stored as w + 1

    @property
    def shape(self) -> tuple[int, ...]:
        return self.source.shape

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * (4 if self.dtype == "F32" else 2)


def hf_name(arch: str, name: str) -> str:
    """The HF name of GGUF tensor `name`; `CheckpointError` when it has none."""
    if name in _TOP:
        return _TOP[name]
    match = _BLOCK.fullmatch(name)
    layer_map = _LAYER_MAPS.get(arch, _LAYER)
    if match and match.group(2) in layer_map:
        return f"model.layers.{match.group(1)}.{layer_map[match.group(2)]}.{match.group(3)}"
    raise CheckpointError(f"GGUF tensor {name} of architecture {arch} has no Hugging Face "
                          "counterpart the engine reads; not supported")


def unpermute_rows(rows: int, heads: int) -> np.ndarray:
    """Source row of each output row, undoing llama.cpp's q/k permutation for `heads`."""
    half = rows // heads // 2
    index = np.arange(rows).reshape(heads, 2, half).swapaxes(1, 2).reshape(rows)
    # llama.cpp: out = w.reshape(heads, 2, half).swapaxes(1, 2); we want its inverse
    inverse = np.empty_like(index)
    inverse[index] = np.arange(rows)
    return inverse


def plan_tensors(gguf: GgufFile, config: dict[str, Any]) -> list[TensorJob]:
    """One job per HF tensor, in file order; every type and name is checked first."""
    arch = gguf.architecture
    bad = sorted({t.type_name for t in gguf.tensors.values() if t.type_name not in SUPPORTED_TYPES})
    if bad:
        named = next(t.name for t in gguf.tensors.values() if t.type_name == bad[0])
        raise CheckpointError(
            f"{gguf.path}: tensor type {', '.join(bad)} (e.g. {named}) is not supported; "
            f"supported: {', '.join(SUPPORTED_TYPES)}")
    heads, kv_heads = int(config["num_attention_heads"]), int(config["num_key_value_heads"])
    jobs = []
    for tensor in gguf.tensors.values():
        if tensor.name in _NOT_WEIGHTS:
            continue
        name = hf_name(arch, tensor.name)
        dtype = PLAIN_TYPES.get(tensor.type_name, "F32")
        rows = None
        if arch == "llama" and (".attn_q." in tensor.name or ".attn_k." in tensor.name):
            n = heads if ".attn_q." in tensor.name else kv_heads
            rows = unpermute_rows(tensor.shape[0], n)
        minus_one = arch.startswith("gemma") and name.endswith("norm.weight")
        if minus_one:
            dtype = "F32"
        jobs.append(TensorJob(name, tensor, dtype, rows, minus_one))
    return jobs


def _dequantize(data: np.ndarray, type_id: int) -> np.ndarray:
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    return np.asarray(dequantize(data, GGMLQuantizationType(type_id)), dtype=np.float32)


def chunks(job: TensorJob) -> Iterator[bytes]:
    """The output tensor's bytes (little-endian, row-major), a row chunk at a time."""
    src = job.source
    raw = src.data
    if src.type_name == "BF16":  # the reader gives BF16 as bytes: make them elements
        raw = np.ascontiguousarray(raw).view(np.uint16)
    if len(src.shape) == 1:  # norms, biases: one row (a permuted bias is a column)
        if job.rows is not None and src.type_name not in PLAIN_TYPES:
            raise CheckpointError(f"{src.name}: a permuted {src.type_name} vector")
        data = raw.reshape(-1, 1) if job.rows is not None else raw.reshape(1, -1)
    else:
        data = raw.reshape(src.shape[0], -1)
    n_rows = data.shape[0]
    row_len = int(np.prod(src.shape)) // n_rows
    step = max(1, CHUNK_ELEMENTS // max(row_len, 1))
    for start in range(0, n_rows, step):
        stop = min(n_rows, start + step)
        part = data[job.rows[start:stop]] if job.rows is not None else data[start:stop]
        if src.type_name in PLAIN_TYPES and not job.minus_one:
            yield np.ascontiguousarray(part).tobytes()
            continue
        values = (_dequantize(np.ascontiguousarray(part), src.type_id)
                  if src.type_name in BLOCK_TYPES else _plain_to_f32(part, src.type_name))
        if job.minus_one:
            values = values - np.float32(1.0)
        yield np.ascontiguousarray(values, dtype="<f4").tobytes()


def _plain_to_f32(part: np.ndarray, type_name: str) -> np.ndarray:
    if type_name == "BF16":
        return (np.asarray(part, dtype=np.uint32) << 16).view(np.float32)
    return np.asarray(part, dtype=np.float32)


__all__ = ["BLOCK_TYPES", "PLAIN_TYPES", "SUPPORTED_TYPES", "TensorJob", "chunks", "hf_name",
           "plan_tensors", "unpermute_rows"]
