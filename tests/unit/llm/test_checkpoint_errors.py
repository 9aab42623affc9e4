"""Bad checkpoints are refused with `CheckpointError`s that name the problem."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import support.hf_checkpoints as hf
from edge_runtime.errors import CheckpointError
from edge_runtime.llm import Checkpoint, LlmConfig


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_config(directory: Path, **changes: Any) -> None:
    path = directory / "config.json"
    raw = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            raw.pop(k, None)
        else:
            raw[k] = v
    path.write_text(json.dumps(raw))


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"model_type": "gpt2"}, "model_type"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"mlp_bias": True}, "mlp_bias"),
        ({"num_key_value_heads": 3}, "num_key_value_heads"),
        ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}}, "rope_type"),
        ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
        ({"hidden_size": "64"}, "hidden_size"),
    ],
)
def test_unsupported_config_field_is_named(
    changes: dict[str, Any], field: str, checkpoint: Callable[[str], Path], tmp_path: Path
) -> None:
    d = copy(checkpoint("llama"), tmp_path / "ck")
    edit_config(d, **changes)
    with pytest.raises(CheckpointError, match=field):
        Checkpoint(d)


def test_qwen2_sliding_window_is_refused() -> None:
    raw = {**hf.COMMON, "model_type": "qwen2", "use_sliding_window": True, "sliding_window": 8}
    with pytest.raises(CheckpointError, match="use_sliding_window"):
        LlmConfig.from_dict(raw)


def test_transformers4_rope_spelling_is_read() -> None:
    raw = {
        **hf.COMMON,
        "model_type": "llama",
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "original_max_position_embeddings": 16,
        },
    }
    cfg = LlmConfig.from_dict(raw)
    assert cfg.rope.rope_type == "llama3" and cfg.rope.theta == 500000.0 and cfg.rope.factor == 8.0
    assert cfg.group_size == 2 and cfg.head_dim == 16


def test_architecture_differences_come_from_config(checkpoint: Callable[[str], Path]) -> None:
    qwen = LlmConfig.from_checkpoint(checkpoint("qwen2"))
    assert qwen.qkv_bias and not qwen.o_bias and qwen.tie_word_embeddings
    mistral = LlmConfig.from_checkpoint(checkpoint("mistral"))
    assert mistral.sliding_window == 6 and mistral.head_dim == 16
    llama3 = LlmConfig.from_checkpoint(checkpoint("llama3"))
    assert llama3.qkv_bias and llama3.o_bias and llama3.rope.rope_type == "llama3"


def test_missing_config(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"config\.json"):
        Checkpoint(tmp_path)


def test_missing_shard_is_named(checkpoint: Callable[[str], Path], tmp_path: Path) -> None:
    d = copy(checkpoint("llama_sharded"), tmp_path / "ck")
    victim = sorted(d.glob("model-*.safetensors"))[3]
    victim.unlink()
    with pytest.raises(CheckpointError, match=victim.name):
        Checkpoint(d)


def test_no_weights(checkpoint: Callable[[str], Path], tmp_path: Path) -> None:
    d = tmp_path / "ck"
    d.mkdir()
    shutil.copy(checkpoint("llama") / "config.json", d)
    with pytest.raises(CheckpointError, match="safetensors"):
        Checkpoint(d)


def test_tensors_that_do_not_match_the_config(
    checkpoint: Callable[[str], Path], tmp_path: Path
) -> None:
    d = copy(checkpoint("llama"), tmp_path / "ck")
    edit_config(d, intermediate_size=128)
    with pytest.raises(CheckpointError, match=r"mlp\.gate_proj\.weight has shape \[160, 64\]"):
        Checkpoint(d)
    edit_config(d, intermediate_size=160, num_hidden_layers=3)
    with pytest.raises(CheckpointError, match=r"missing model\.layers\.2\."):
        Checkpoint(d)
    edit_config(d, num_hidden_layers=1)
    with pytest.raises(CheckpointError, match=r"unexpected model\.layers\.1\."):
        Checkpoint(d)


def test_truncated_file(checkpoint: Callable[[str], Path], tmp_path: Path) -> None:
    d = copy(checkpoint("llama"), tmp_path / "ck")
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        Checkpoint(d)


def test_bf16_is_widened_exactly(checkpoint: Callable[[str], Path]) -> None:
    import torch
    from safetensors.torch import load_file

    ck = Checkpoint(checkpoint("llama_bf16"))
    name = "model.layers.0.mlp.up_proj.weight"
    ours = ck.tensor(name)
    theirs = load_file(str(checkpoint("llama_bf16") / "model.safetensors"))[name]
    assert theirs.dtype == torch.bfloat16
    np.testing.assert_array_equal(ours, theirs.float().numpy())
