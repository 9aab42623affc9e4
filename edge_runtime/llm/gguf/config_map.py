"""A Hugging Face `config.json` dict from a GGUF file's metadata (llama.cpp key names).

Why a dict in HF's spelling rather than an `LlmConfig`: the converted directory must
be an ordinary checkpoint that `LlmConfig.from_checkpoint` validates like any other —
so an architecture the engine learns later (Qwen3, Gemma 2/3, Phi-3 are being added)
works from GGUF without touching this module, and a field the engine cannot run is
refused by the same code and message as for safetensors.

Mapped architectures: llama, qwen2, qwen3, gemma2, gemma3, phi3. Everything the file
states about the model's shape is written, even where it equals an HF default. What
llama.cpp does not store is filled the way llama.cpp itself runs the model (e.g.
Gemma's local RoPE base 10000 and 5:1 local/global pattern) and said so below.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from edge_runtime.errors import CheckpointError
from edge_runtime.llm.gguf.reader import GgufFile

# HF model_type and architectures entry per GGUF `general.architecture`.
MODEL_TYPES: dict[str, tuple[str, str]] = {
    "llama": ("llama", "LlamaForCausalLM"),
    "qwen2": ("qwen2", "Qwen2ForCausalLM"),
    "qwen3": ("qwen3", "Qwen3ForCausalLM"),
    "gemma2": ("gemma2", "Gemma2ForCausalLM"),
    "gemma3": ("gemma3_text", "Gemma3ForCausalLM"),
    "phi3": ("phi3", "Phi3ForCausalLM"),
}
ROPE_FREQS = "rope_freqs.weight"
# Tensors that hold RoPE factors instead of weights: refused by name (no mapping yet).
_LONGROPE = ("rope_factors_long.weight", "rope_factors_short.weight")


def supported_architectures() -> tuple[str, ...]:
    return tuple(MODEL_TYPES)


def hf_config(gguf: GgufFile) -> dict[str, Any]:
    """The HF config dict of `gguf`; `CheckpointError` names an unmapped key or value."""
    arch = gguf.architecture
    splits = gguf.metadata.get("split.count")
    if isinstance(splits, int) and splits > 1:
        raise CheckpointError(
            f"{gguf.path} is part 1 of a {splits}-file split GGUF; merge the parts first "
            "(llama-gguf-split --merge FIRST.gguf OUT.gguf) and pass the merged file")
    if arch not in MODEL_TYPES:
        raise CheckpointError(
            f"{gguf.path}: unsupported general.architecture={arch!r}; GGUF files of "
            f"{', '.join(MODEL_TYPES)} are read")
    for name in _LONGROPE:
        if name in gguf.tensors:
            raise CheckpointError(f"{gguf.path}: tensor {name} (LongRoPE factors) is not "
                                  "supported; use a short-context (4k) variant of the model")
    config = _common(gguf)
    config.update(_EXTRA[arch](gguf, config))
    return config


def _int(gguf: GgufFile, key: str) -> int:
    value = gguf.need(key)
    if isinstance(value, list):  # per-layer values (e.g. head_count_kv): one must hold
        if len(set(value)) != 1:
            raise CheckpointError(f"{gguf.path}: {gguf.architecture}.{key}={value} varies "
                                  "per layer; not supported")
        value = value[0]
    if not isinstance(value, int) or isinstance(value, bool):
        raise CheckpointError(f"{gguf.path}: {gguf.architecture}.{key}={value!r} is not an integer")
    return value


def _common(gguf: GgufFile) -> dict[str, Any]:
    arch = gguf.architecture
    model_type, architecture = MODEL_TYPES[arch]
    hidden = _int(gguf, "embedding_length")
    heads = _int(gguf, "attention.head_count")
    kv_heads = _int(gguf, "attention.head_count_kv") if gguf.arch_value(
        "attention.head_count_kv") is not None else heads
    head_dim = (_int(gguf, "attention.key_length")
                if gguf.arch_value("attention.key_length") is not None else hidden // heads)
    value_len = gguf.arch_value("attention.value_length")
    if value_len is not None and value_len != head_dim:
        raise CheckpointError(f"{gguf.path}: {arch}.attention.value_length={value_len} differs "
                              f"from the key length {head_dim}; not supported")
    rotary = gguf.arch_value("rope.dimension_count")
    if rotary is not None and rotary != head_dim:
        raise CheckpointError(f"{gguf.path}: {arch}.rope.dimension_count={rotary} rotates part "
                              f"of each {head_dim}-wide head; partial rotary is not supported")
    tokens = gguf.metadata.get("tokenizer.ggml.tokens")
    vocab = gguf.arch_value("vocab_size") or (len(tokens) if isinstance(tokens, list) else None)
    embed = gguf.tensors.get("token_embd.weight")
    if embed is not None:
        vocab = embed.shape[0]  # the embedding is the truth; some vocabularies are padded
    if not vocab:
        raise CheckpointError(f"{gguf.path}: no vocabulary size (no token_embd.weight)")
    config: dict[str, Any] = {
        "model_type": model_type,
        "architectures": [architecture],
        "hidden_size": hidden,
        "intermediate_size": _int(gguf, "feed_forward_length"),
        "num_hidden_layers": _int(gguf, "block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "vocab_size": int(vocab),
        "rms_norm_eps": float(gguf.arch_value("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(gguf.arch_value("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(gguf.arch_value("context_length", 2048)),
        # llama.cpp writes the output projection only when it is not the embedding
        "tie_word_embeddings": "output.weight" not in gguf.tensors,
        "hidden_act": "silu",
        "torch_dtype": "float32",
    }
    bos = gguf.metadata.get("tokenizer.ggml.bos_token_id")
    if bos is not None:
        config["bos_token_id"] = int(bos)
    # llama.cpp stops at eos and at the end-of-turn/message tokens an instruct file names
    eos = [gguf.metadata.get(f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot", "eom")]
    eos_ids = list(dict.fromkeys(int(e) for e in eos if e is not None))
    if eos_ids:
        config["eos_token_id"] = eos_ids[0] if len(eos_ids) == 1 else eos_ids
    pad = gguf.metadata.get("tokenizer.ggml.padding_token_id")
    if pad is not None:
        config["pad_token_id"] = int(pad)
    config.update(_rope_scaling(gguf, head_dim, config["rope_theta"]))
    return config


def _rope_scaling(gguf: GgufFile, head_dim: int, theta: float) -> dict[str, Any]:
    kind = gguf.arch_value("rope.scaling.type")
    if ROPE_FREQS in gguf.tensors:
        if kind not in (None, "none"):
            raise CheckpointError(f"{gguf.path}: both {ROPE_FREQS} and "
                                  f"{gguf.architecture}.rope.scaling.type={kind!r}")
        factors = np.asarray(gguf.tensors[ROPE_FREQS].data, dtype=np.float32).ravel()
        return llama3_rope(factors, head_dim, theta, str(gguf.path))
    if kind in (None, "none"):
        return {}
    if kind == "linear":
        return {"rope_scaling": {"rope_type": "linear",
                                 "factor": float(gguf.need("rope.scaling.factor"))}}
    # the engine refuses it by name; keep what the file says so the message is exact
    return {"rope_scaling": {"rope_type": str(kind),
                             "factor": float(gguf.arch_value("rope.scaling.factor", 1.0))}}


def _llama3_factors(head_dim: int, theta: float, factor: float, low: float, high: float,
                    original: int) -> np.ndarray:
    """The factors llama.cpp's converter writes as rope_freqs.weight for Llama 3 scaling."""
    freqs = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / float(freq)
        if wavelen < original / high:
            out.append(1.0)
        elif wavelen > original / low:
            out.append(factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def llama3_rope(factors: np.ndarray, head_dim: int, theta: float, source: str
                ) -> dict[str, Any]:
    """Recover Llama 3 `rope_scaling` from the per-frequency factors llama.cpp stores.

    Why a search: the file keeps only the factors. `factor` is their maximum; the other
    three parameters are tried over the values Llama 3.x and its derivatives use, and
    accepted only if they regenerate every factor (else the file is refused)."""
    if factors.size != head_dim // 2:
        raise CheckpointError(f"{source}: {ROPE_FREQS} has {factors.size} values; "
                              f"expected head_dim/2 = {head_dim // 2}")
    factor = float(factors.max())
    if np.allclose(factors, 1.0):
        return {}
    for original in (8192, *(2 ** k for k in range(4, 21))):
        for low in (1.0, 2.0, 0.5):
            for high in (4.0, 2.0, 8.0, 1.0 + 1e-9):
                if high <= low:
                    continue
                ref = _llama3_factors(head_dim, theta, factor, low, high, original)
                if np.allclose(ref, factors, rtol=1e-4, atol=1e-6):
                    return {"rope_scaling": {
                        "rope_type": "llama3", "factor": factor, "low_freq_factor": low,
                        "high_freq_factor": high, "original_max_position_embeddings": original}}
    raise CheckpointError(f"{source}: {ROPE_FREQS} holds RoPE factors that are not Llama 3 "
                          "scaling with any usual parameters; not supported")


def _llama(gguf: GgufFile, config: dict[str, Any]) -> dict[str, Any]:
    return {"attention_bias": "blk.0.attn_q.bias" in gguf.tensors,
            "mlp_bias": "blk.0.ffn_up.bias" in gguf.tensors}


def _qwen2(gguf: GgufFile, config: dict[str, Any]) -> dict[str, Any]:
    return {"use_sliding_window": False}


def _qwen3(gguf: GgufFile, config: dict[str, Any]) -> dict[str, Any]:
    return {"attention_bias": "blk.0.attn_q.bias" in gguf.tensors, "use_sliding_window": False}


def _gemma_scale(gguf: GgufFile, config: dict[str, Any]) -> float:
    # llama.cpp scales queries by 1/sqrt(head_dim), except Gemma 2/3 27B (by layer
    # count) by 1/sqrt(hidden/heads): HF's query_pre_attn_scalar is that denominator.
    big = config["num_hidden_layers"] in (46, 62)
    return float(config["hidden_size"] // config["num_attention_heads"] if big
                 else config["head_dim"])


def _gemma2(gguf: GgufFile, config: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh",
        "query_pre_attn_scalar": _gemma_scale(gguf, config),
        "attn_logit_softcapping": gguf.arch_value("attn_logit_softcapping"),
        "final_logit_softcapping": gguf.arch_value("final_logit_softcapping"),
        "sliding_window": gguf.arch_value("attention.sliding_window"),
    }
    return out


def _gemma3(gguf: GgufFile, config: dict[str, Any]) -> dict[str, Any]:
    pattern = gguf.arch_value("attention.sliding_window_pattern")
    # llama.cpp fixes Gemma 3's pattern at 5 local layers then 1 global (period 6)
    period = 6 if not isinstance(pattern, int) else pattern
    layers = config["num_hidden_layers"]
    return {
        "hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh",
        "query_pre_attn_scalar": _gemma_scale(gguf, config),
        "sliding_window": gguf.arch_value("attention.sliding_window"),
        "sliding_window_pattern": period,
        "layer_types": ["full_attention" if (i + 1) % period == 0 else "sliding_attention"
                        for i in range(layers)],
        # not stored by llama.cpp, which runs local layers at base 10000 as HF does
        "rope_local_base_freq": float(gguf.arch_value("rope.freq_base_swa", 10000.0)),
        "final_logit_softcapping": gguf.arch_value("final_logit_softcapping"),
        "attn_logit_softcapping": gguf.arch_value("attn_logit_softcapping"),
    }


def _phi3(gguf: GgufFile, config: dict[str, Any]) -> dict[str, Any]:
    window = gguf.arch_value("attention.sliding_window")
    return {"sliding_window": int(window) if window else None,
            "original_max_position_embeddings": config["max_position_embeddings"]}


_EXTRA: dict[str, Callable[[GgufFile, dict[str, Any]], dict[str, Any]]] = {
    "llama": _llama, "qwen2": _qwen2, "qwen3": _qwen3, "gemma2": _gemma2,
    "gemma3": _gemma3, "phi3": _phi3,
}

__all__ = ["MODEL_TYPES", "hf_config", "llama3_rope", "supported_architectures"]
