"""Mixtures of experts (Qwen3-MoE, Mixtral): what config.json says is read, what the
engine does not run (dense layers among the sparse ones, shared experts) is refused by
name before a tensor is read, and a checkpoint missing an expert is refused by name."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from safetensors.numpy import load_file, save_file

import support.hf_checkpoints as hf
from edge_runtime.errors import CheckpointError
from edge_runtime.llm import Checkpoint, LlmConfig
from edge_runtime.llm.checkpoint import expected_tensors


def test_qwen3_moe_fields(checkpoint: Callable[[str], Path]) -> None:
    c = LlmConfig.from_checkpoint(checkpoint("qwen3_moe"))
    assert (c.experts, c.experts_per_token, c.expert_intermediate) == (6, 2, 32)
    assert not c.norm_topk_prob and c.qk_norm and c.moe_block == "mlp"
    assert c.expert_tensors(1, 5) == tuple(
        f"model.layers.1.mlp.experts.5.{n}_proj.weight" for n in ("gate", "up", "down"))
    assert c.router_tensor(0) == "model.layers.0.mlp.gate.weight"
    shape = c.decoder_shape(64)
    assert (shape.experts, shape.experts_per_token, shape.intermediate) == (6, 2, 6 * 32)
    assert shape.expert_intermediate == 32


def test_mixtral_fields(checkpoint: Callable[[str], Path]) -> None:
    c = LlmConfig.from_checkpoint(checkpoint("mixtral"))
    assert (c.experts, c.experts_per_token, c.expert_intermediate) == (5, 2, 64)
    assert c.norm_topk_prob  # Mixtral always renormalises its top-k weights
    assert [c.layer_window(i) for i in range(2)] == [6, 6] and not c.qkv_bias
    assert c.expert_tensors(0, 4) == tuple(
        f"model.layers.0.block_sparse_moe.experts.4.{n}.weight" for n in ("w1", "w3", "w2"))
    names = expected_tensors(c)
    assert names["model.layers.1.block_sparse_moe.gate.weight"] == (5, 64)
    assert not any("mlp." in n for n in names)


def test_hub_spelling_num_experts_is_read() -> None:
    """Hub Qwen3-MoE configs say num_experts; transformers 5 writes num_local_experts."""
    c = LlmConfig.from_dict({**hf.COMMON, "model_type": "qwen3_moe", "num_experts": 8,
                             "num_experts_per_tok": 2, "moe_intermediate_size": 16,
                             "norm_topk_prob": True})
    assert (c.experts, c.expert_intermediate, c.norm_topk_prob) == (8, 16, True)


@pytest.mark.parametrize("kind, changes, field", [
    ("qwen3_moe", {"mlp_only_layers": [1]}, "mlp_only_layers=[1]"),
    ("qwen3_moe", {"decoder_sparse_step": 2}, "decoder_sparse_step=2"),
    ("qwen3_moe", {"shared_expert_intermediate_size": 64},
     "shared_expert_intermediate_size=64"),
    ("qwen3_moe", {"use_sliding_window": True, "sliding_window": 4}, "use_sliding_window"),
    ("qwen3_moe", {"num_experts_per_tok": 7}, "num_experts_per_tok=7"),
    ("mixtral", {"num_local_experts": 0}, "num_experts"),
    ("mixtral", {"n_shared_experts": 1}, "n_shared_experts=1"),
    ("llama", {"shared_expert_intermediate_size": 64}, "shared_expert_intermediate_size"),
])
def test_unsupported_moe_field_is_refused_by_name(
    kind: str, changes: dict[str, Any], field: str, checkpoint: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    bad = shutil.copytree(checkpoint(kind), tmp_path / "bad")
    config = json.loads((bad / "config.json").read_text())
    config.update(changes)
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=field.replace("[", r"\[").replace("]", r"\]")):
        Checkpoint(bad)


def test_a_missing_expert_is_refused_by_name(checkpoint: Callable[[str], Path],
                                             tmp_path: Path) -> None:
    bad = shutil.copytree(checkpoint("qwen3_moe"), tmp_path / "bad")
    tensors = load_file(str(bad / "model.safetensors"))
    del tensors["model.layers.1.mlp.experts.3.up_proj.weight"]
    save_file(tensors, str(bad / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing model\.layers\.1\.mlp\.experts\.3\.up"):
        Checkpoint(bad)
