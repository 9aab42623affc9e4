"""Write a synthetic Llama-shaped checkpoint (random fp32 weights) without torch.

Why: benchmarks need checkpoints of realistic size (e.g. TARGETS.md's reference: hidden
2048, intermediate 5632, 6 layers, 16 heads, vocab 32000, 1.76 GB) on machines with no
download and no PyTorch. The files are a normal Hugging Face directory (config.json +
model.safetensors), so the engine reads them exactly as it reads a published model.
Speed does not depend on the weight values; numerics are tested on real HF checkpoints.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyntheticShape:
    hidden: int = 2048
    intermediate: int = 5632
    layers: int = 6
    heads: int = 16
    kv_heads: int = 16
    vocab: int = 32000
    max_position_embeddings: int = 2048


REFERENCE = SyntheticShape()


def write_synthetic_checkpoint(
    directory: str | Path, shape: SyntheticShape = REFERENCE, seed: int = 0
) -> Path:
    """Write (or reuse) `directory` holding a random Llama checkpoint of `shape`."""
    from safetensors.numpy import save_file

    out = Path(directory)
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, hd = shape.hidden, shape.hidden // shape.heads

    def w(*dims: int) -> np.ndarray:
        return rng.standard_normal(dims, dtype=np.float32) * np.float32(0.02)

    tensors: dict[str, np.ndarray] = {
        "model.embed_tokens.weight": w(shape.vocab, h),
        "model.norm.weight": np.ones(h, np.float32),
        "lm_head.weight": w(shape.vocab, h),
    }
    for i in range(shape.layers):
        p = f"model.layers.{i}."
        tensors[p + "input_layernorm.weight"] = np.ones(h, np.float32)
        tensors[p + "post_attention_layernorm.weight"] = np.ones(h, np.float32)
        tensors[p + "self_attn.q_proj.weight"] = w(shape.heads * hd, h)
        tensors[p + "self_attn.k_proj.weight"] = w(shape.kv_heads * hd, h)
        tensors[p + "self_attn.v_proj.weight"] = w(shape.kv_heads * hd, h)
        tensors[p + "self_attn.o_proj.weight"] = w(h, shape.heads * hd)
        tensors[p + "mlp.gate_proj.weight"] = w(shape.intermediate, h)
        tensors[p + "mlp.up_proj.weight"] = w(shape.intermediate, h)
        tensors[p + "mlp.down_proj.weight"] = w(h, shape.intermediate)
    save_file(tensors, str(out / "model.safetensors"))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": h,
        "intermediate_size": shape.intermediate,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "vocab_size": shape.vocab,
        "max_position_embeddings": shape.max_position_embeddings,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
    }
    (out / "config.json").write_text(json.dumps(config, indent=1))
    return out


__all__ = ["REFERENCE", "SyntheticShape", "write_synthetic_checkpoint"]
