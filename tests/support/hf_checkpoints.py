"""Tiny random Hugging Face checkpoints and their reference outputs, built with transformers.

Why: the engine must match `transformers` itself, so the fixtures are made by it
(`save_pretrained`, safetensors) and the references come from its PyTorch forward
pass. Each kind covers one architecture feature: GQA, llama3 RoPE scaling, attention
biases (Llama `attention_bias`, Qwen2 q/k/v biases), Mistral's sliding window, tied
embeddings, bf16 weights and a sharded checkpoint with an index. The init range is
wider than the default so logits are peaked and greedy choices are not near-ties.
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


def _config(kind: str) -> Any:
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    spec = {**COMMON, **KINDS[kind]}
    classes = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}
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
    if KINDS[kind].get("dtype") == "bfloat16":
        model = model.to(torch.bfloat16)
    shard = KINDS[kind].get("shard")
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
