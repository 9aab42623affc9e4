"""GGUF files the engine cannot run are refused with a CheckpointError naming the key or
type, in seconds, before a byte of weights is converted (nothing lands in the cache)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import support.gguf_files as gf
from edge_runtime.errors import CheckpointError
from edge_runtime.llm.checkpoint import FileHashes
from edge_runtime.llm.gguf import convert_gguf, default_gguf_cache
from edge_runtime.llm.gguf.config_map import llama3_rope


def refused(path: Path, *fragments: str) -> None:
    with pytest.raises(CheckpointError) as caught:
        convert_gguf(path)
    for fragment in fragments:
        assert fragment in str(caught.value)
    digest = FileHashes.at().sha256(path)
    assert not any(p.name.startswith(digest) for p in default_gguf_cache().glob("*"))


def test_unsupported_architecture_is_named(tmp_path: Path) -> None:
    path = gf.write_vocab_only(tmp_path / "falcon.gguf", "falcon", gf.spm_vocab())
    refused(path, "general.architecture='falcon'", "llama, qwen2, qwen3")


def test_unsupported_tensor_type_is_named(tmp_path: Path) -> None:
    path = gf.write_gguf(tmp_path / "iq.gguf", "llama", "Q8_0",
                         types={"blk.1.ffn_down.weight": "IQ4_NL"})
    refused(path, "IQ4_NL", "blk.1.ffn_down.weight", "Q4_K")


def test_config_the_engine_refuses_is_named_before_converting(tmp_path: Path) -> None:
    path = gf.write_gguf(tmp_path / "yarn.gguf", "llama", "F32",
                         metadata={"llama.rope.scaling.type": "yarn",
                                   "llama.rope.scaling.factor": 4.0})
    refused(path, "rope_scaling.rope_type='yarn'", "yarn.gguf")


def test_llama3_rope_factors_that_fit_no_parameters_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"rope_freqs\.weight"):
        llama3_rope(np.linspace(1.0, 3.0, 8, dtype=np.float32), 16, 1e4, "x")


def test_not_a_gguf_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF" + b"\x00" * 7)
    refused(path, "broken.gguf", "not a readable GGUF file")
    with pytest.raises(CheckpointError, match="no GGUF file"):
        convert_gguf(tmp_path / "absent.gguf")


def test_split_files_are_refused_with_the_merge_command(tmp_path: Path) -> None:
    path = gf.write_gguf(tmp_path / "model-00001-of-00003.gguf", "llama", "F32",
                         metadata={"split.count": 3})
    refused(path, "3-file split GGUF", "llama-gguf-split --merge")


def test_tensors_that_contradict_the_metadata_are_named(tmp_path: Path) -> None:
    path = gf.write_gguf(tmp_path / "wide-heads.gguf", "qwen2", "F32",
                         metadata={"qwen2.attention.key_length": 32})
    refused(path, "blk.0.attn_q.weight has shape [64, 64], the metadata says [128, 64]")
