"""Tiny random Hugging Face checkpoints and their reference outputs, built with transformers.

Why: the engine must match `transformers` itself, so the fixtures are made by it
(`save_pretrained`, safetensors) and the references come from its PyTorch forward
pass. Each kind covers one architecture feature: GQA, llama3 RoPE scaling, attention
biases (Llama `attention_bias`, Qwen2 q/k/v biases), Mistral's sliding window, tied
embeddings, bf16 weights and a sharded checkpoint with an index. The init range is
wider than the default so logits are peaked and greedy choices are not near-ties.

`ARCH_KINDS` are the architectures beyond the Llama family: Qwen3 (per-head q/k norms,
head_dim != hidden/heads), Gemma 2 (GeGLU, sandwich norms with +1, soft-capping,
query_pre_attn_scalar, alternating sliding/global layers), Gemma 3 (q/k norms, its own
RoPE theta on local layers, linear scaling on global ones) and Phi-3 (fused qkv and
gate/up, sliding window). Their norm weights are perturbed after initialisation (HF
initialises them to exactly 1, or 0 for Gemma's 1+w), so a norm the engine drops, or a
+1 it forgets, changes the logits.

`MOE_KINDS` are mixtures of experts: Qwen3-MoE (q/k norms, top-k weights not
renormalised) and Mixtral (its own tensor names, weights always renormalised, sliding
window). Their widths are multiples of 32 so every expert matrix has a 4-bit kernel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

COMMON: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 160,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 200,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-5,
    "initializer_range": 0.15,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "tie_word_embeddings": False,
}

KINDS: dict[str, dict[str, Any]] = {
    "llama": {"model_type": "llama"},
    "llama3": {
        "model_type": "llama",
        "num_key_value_heads": 1,
        "attention_bias": True,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
        "rope_theta": 500000.0,
    },
    "mistral": {"model_type": "mistral", "sliding_window": 6, "head_dim": 16},
    "qwen2": {"model_type": "qwen2", "tie_word_embeddings": True},
    "llama_bf16": {"model_type": "llama", "dtype": "bfloat16"},
    "llama_sharded": {"model_type": "llama", "shard": "40KB", "num_key_value_heads": 4},
}


ARCH_KINDS: dict[str, dict[str, Any]] = {
    "qwen3": {"model_type": "qwen3", "head_dim": 24, "tie_word_embeddings": True},
    "gemma2": {
        "model_type": "gemma2",
        "head_dim": 24,
        "query_pre_attn_scalar": 20,
        "sliding_window": 4,
        "num_hidden_layers": 3,
        "attn_logit_softcapping": 3.0,
        "final_logit_softcapping": 8.0,
        "hidden_activation": "gelu_pytorch_tanh",
        "pad_token_id": 0,
        "tie_word_embeddings": True,
    },
    "gemma3": {
        "model_type": "gemma3_text",
        "head_dim": 32,
        "query_pre_attn_scalar": 24,
        "sliding_window": 4,
        "num_hidden_layers": 3,
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
        "rope_parameters": {
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
        },
        "hidden_activation": "gelu_pytorch_tanh",
        "pad_token_id": 0,
        "tie_word_embeddings": True,
    },
    "phi3": {"model_type": "phi3", "sliding_window": 5, "pad_token_id": 0},
}


MOE_KINDS: dict[str, dict[str, Any]] = {
    "qwen3_moe": {"model_type": "qwen3_moe", "num_experts": 6, "num_experts_per_tok": 2,
                  "moe_intermediate_size": 32, "norm_topk_prob": False},
    "mixtral": {"model_type": "mixtral", "num_local_experts": 5, "num_experts_per_tok": 2,
                "intermediate_size": 64, "sliding_window": 6},
}


def spec_of(kind: str) -> dict[str, Any]:
    """The transformers config arguments of checkpoint `kind` (any of the tables)."""
    table = KINDS if kind in KINDS else ARCH_KINDS if kind in ARCH_KINDS else MOE_KINDS
    return {**COMMON, **table[kind]}


def _config(kind: str) -> Any:
    from transformers import (
        Gemma2Config,
        Gemma3TextConfig,
        LlamaConfig,
        MistralConfig,
        MixtralConfig,
        Phi3Config,
        Qwen2Config,
        Qwen3Config,
        Qwen3MoeConfig,
    )

    spec = spec_of(kind)
    classes = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config,
               "qwen3": Qwen3Config, "gemma2": Gemma2Config, "gemma3_text": Gemma3TextConfig,
               "phi3": Phi3Config, "qwen3_moe": Qwen3MoeConfig, "mixtral": MixtralConfig}
    cls = classes[spec.pop("model_type")]
    spec.pop("shard", None)
    spec.pop("dtype", None)
    return cls(**spec)


def build(kind: str, directory: Path, seed: int = 0) -> Path:
    """Write checkpoint `kind` into `directory` (reused when already there)."""
    if (directory / "config.json").is_file():
        return directory
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(kind), attn_implementation="eager")
    model.eval()
    if kind in ARCH_KINDS or kind in MOE_KINDS:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "norm" in name:
                    param.add_(torch.randn_like(param) * 0.3)
    spec = spec_of(kind)
    if spec.get("dtype") == "bfloat16":
        model = model.to(torch.bfloat16)
    shard = spec.get("shard")
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(directory, safe_serialization=True, **kwargs)
    return directory


def _load(directory: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(
        directory, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    return model


def reference_logits(directory: Path, ids: list[int]) -> np.ndarray:
    """transformers' fp32 logits [len(ids), vocab] for one sequence."""
    import torch

    model = _load(directory)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids])).logits[0]
    return np.asarray(out.float().numpy())


def reference_greedy(directory: Path, ids: list[int], max_new_tokens: int) -> list[int]:
    """transformers' greedy continuation (new tokens only, stopping at EOS like HF)."""
    import torch

    model = _load(directory)
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=0,
        )
    new: list[int] = out[0, len(ids) :].tolist()
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    for i, t in enumerate(new):
        if t in eos_ids:
            return new[: i + 1]
    return new
