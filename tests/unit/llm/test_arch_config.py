"""What differs between architectures is read from config.json, and what we do not run is
refused by name (a `CheckpointError`) before a tensor is read."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import support.hf_checkpoints as hf
from edge_runtime.errors import CheckpointError
from edge_runtime.llm import Checkpoint, LlmConfig, RopeConfig


def read(kind: str, checkpoint: Callable[[str], Path]) -> LlmConfig:
    return LlmConfig.from_checkpoint(checkpoint(kind))


def test_qwen3_fields(checkpoint: Callable[[str], Path]) -> None:
    c = read("qwen3", checkpoint)
    assert c.qk_norm and not c.qkv_bias and not c.o_bias and not c.sandwich_norms
    assert c.head_dim == 24 and c.heads * c.head_dim != c.hidden
    assert c.attention_scale == pytest.approx(24**-0.5) and c.hidden_act == "silu"
    assert c.layer_window(0) is None and c.tie_word_embeddings


def test_gemma2_fields(checkpoint: Callable[[str], Path]) -> None:
    c = read("gemma2", checkpoint)
    assert c.hidden_act == "gelu_pytorch_tanh" and c.sandwich_norms and not c.qk_norm
    assert c.norm_offset == 1.0 and c.embed_scale == pytest.approx(8.0)
    assert c.attn_softcap == 3.0 and c.final_softcap == 8.0
    assert c.attention_scale == pytest.approx(20**-0.5)
    assert [c.layer_window(i) for i in range(3)] == [4, None, 4]
    assert c.local_rope is None


def test_gemma3_fields(checkpoint: Callable[[str], Path]) -> None:
    c = read("gemma3", checkpoint)
    assert c.qk_norm and c.sandwich_norms and c.attn_softcap is None and c.final_softcap is None
    assert c.rope == RopeConfig(theta=1e6, rope_type="linear", factor=8.0)
    assert c.local_rope == RopeConfig(theta=1e4)
    assert [c.layer_rope(i) for i in range(3)] == [c.local_rope, c.rope, c.local_rope]


def test_phi3_fields(checkpoint: Callable[[str], Path]) -> None:
    c = read("phi3", checkpoint)
    assert c.fused_projections and not c.qkv_bias and c.hidden_act == "silu"
    assert [c.layer_window(i) for i in range(2)] == [5, 5]


def test_transformers4_spellings() -> None:
    """Gemma 2 without layer_types alternates sliding and global layers; Gemma 3 without
    them makes every 6th global, reads rope_local_base_freq and scales the global RoPE."""
    g2 = LlmConfig.from_dict({**hf.COMMON, "model_type": "gemma2", "num_hidden_layers": 4,
                              "sliding_window": 8, "hidden_act": "gelu_pytorch_tanh"})
    assert g2.sliding_layers == (True, False, True, False)
    assert g2.attention_scale == pytest.approx(16**-0.5)  # head_dim without the scalar
    g3 = LlmConfig.from_dict({
        **hf.COMMON, "model_type": "gemma3_text", "num_hidden_layers": 7, "sliding_window": 8,
        "rope_theta": 1e6, "rope_local_base_freq": 5e3, "query_pre_attn_scalar": 32,
        "rope_scaling": {"rope_type": "linear", "factor": 4.0}})
    assert g3.sliding_layers == (True,) * 5 + (False, True)
    assert g3.rope == RopeConfig(theta=1e6, rope_type="linear", factor=4.0)
    assert g3.local_rope == RopeConfig(theta=5e3)


@pytest.mark.parametrize("kind, changes, field", [
    ("phi3", {"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4,
                                  "short_factor": [1.0] * 8, "long_factor": [1.0] * 8}},
     "rope_type='longrope'"),
    ("phi3", {"rope_parameters": None, "rope_scaling": {"type": "su", "short_factor": [1.0]}},
     "rope_scaling.rope_type='su'"),
    ("phi3", {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4,
                                  "partial_rotary_factor": 0.75}},
     "rope_parameters.partial_rotary_factor"),
    ("gemma3", {"model_type": "gemma3"}, "model_type='gemma3'"),
    ("gemma3", {"use_bidirectional_attention": True}, "use_bidirectional_attention"),
    ("gemma3", {"layer_types": ["sliding_attention", "chunked_attention", "full_attention"]},
     "layer_types entry 'chunked_attention'"),
    ("gemma3", {"layer_types": ["sliding_attention"]}, "layer_types"),
    ("gemma3", {"rope_parameters": {"full_attention": {"rope_type": "yarn", "factor": 2.0},
                                    "sliding_attention": {"rope_type": "default"}}},
     "rope_parameters.full_attention.rope_type='yarn'"),
    ("gemma2", {"hidden_activation": "gelu"}, "hidden_activation='gelu'"),
    ("gemma2", {"final_logit_softcapping": -1.0}, "final_logit_softcapping"),
    ("gemma2", {"sliding_window": 0}, "sliding_window"),
    ("qwen3", {"use_sliding_window": True, "sliding_window": 4}, "use_sliding_window"),
    ("qwen3", {"mlp_bias": True}, "mlp_bias"),
    ("qwen3", {"attn_logit_softcapping": 50.0}, "attn_logit_softcapping"),
])
def test_unsupported_field_is_refused_by_name(
    kind: str, changes: dict[str, Any], field: str, checkpoint: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    d = shutil.copytree(checkpoint(kind), tmp_path / "ck")
    raw = json.loads((d / "config.json").read_text())
    raw.update(changes)
    raw = {k: v for k, v in raw.items() if v is not None}
    (d / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=field.replace("(", r"\(").replace("[", r"\[")):
        Checkpoint(d)


@pytest.mark.parametrize("kind, missing", [
    ("phi3", "model.layers.1.self_attn.qkv_proj.weight"),
    ("qwen3", "model.layers.0.self_attn.k_norm.weight"),
    ("gemma2", "model.layers.2.pre_feedforward_layernorm.weight"),
])
def test_architecture_tensors_are_checked(kind: str, missing: str,
                                          checkpoint: Callable[[str], Path],
                                          tmp_path: Path) -> None:
    """A checkpoint lacking one of its architecture's own tensors is refused by name."""
    from safetensors.numpy import load_file, save_file

    d = shutil.copytree(checkpoint(kind), tmp_path / "ck")
    tensors = load_file(str(d / "model.safetensors"))
    del tensors[missing]
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match=f"missing {missing}"):
        Checkpoint(d)
