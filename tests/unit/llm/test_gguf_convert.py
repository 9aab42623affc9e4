"""GGUF files against transformers loading the same file, and the conversion cache.

Every supported weight type (F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K) on a tiny
Llama (SentencePiece vocabulary, permuted q/k rows), and a few on tiny Qwen2 (byte-level
BPE, q/k/v biases, tied embeddings), Qwen3 (q/k norms), Gemma 2 (soft-capping, norms
stored +1, sliding window), Gemma 3 (local/global layers) and Phi-3 (fused qkv and
gate/up): our fp32 logits are within 1e-3 of transformers' (`from_pretrained(dir,
gguf_file=...)`, which dequantizes), for the quantized types too — both sides
dequantize the same blocks, so what is left is float summation order (measured: at
most 4.1e-5). Greedy generation over two unequal workers is identical.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import support.gguf_files as gf
from edge_runtime.errors import CheckpointError
from edge_runtime.llm import Checkpoint, RelativeSpeed, load_local_engine
from edge_runtime.llm.checkpoint import FileHashes
from edge_runtime.llm.gguf import (
    convert_gguf,
    default_gguf_cache,
    is_gguf,
    resolve_checkpoint,
    resolve_config,
)
from edge_runtime.llm.gguf.config_map import _llama3_factors, llama3_rope
from edge_runtime.llm.gguf.tensors import unpermute_rows

IDS = [1, 5, 17, 33, 99, 150, 7, 8, 9, 10, 11, 12, 3]
TOLERANCE = 1e-3
PROMPT = [1, 40, 41, 42, 200, 300]
CASES = [*(("llama", t) for t in gf.TYPES), *(("qwen2", t) for t in ("F32", "F16", "Q8_0", "Q6_K")),
         ("qwen3", "F32"), ("qwen3", "Q4_K"), ("gemma2", "F16"), ("gemma2", "Q8_0"),
         ("gemma3", "Q4_0"), ("gemma3", "Q6_K"), ("phi3", "BF16"), ("phi3", "Q5_K")]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gguf")


def gguf_file(files: Path, arch: str, qtype: str) -> Path:
    return gf.write_gguf(files / f"{arch}-{qtype}.gguf", arch, qtype)


@pytest.mark.parametrize(("arch", "qtype"), CASES)
def test_logits_match_transformers_loading_the_same_file(
        arch: str, qtype: str, files: Path, slice_cache: Path) -> None:
    path = gguf_file(files, arch, qtype)
    directory = convert_gguf(path)
    engine, runner = load_local_engine(directory, cache_dir=slice_cache, max_context=32)
    try:
        got = engine.logits(IDS)
    finally:
        runner.close()
    ref = gf.transformers_logits(path, IDS)
    assert got.shape == ref.shape == (len(IDS), len(gf.vocab_for(arch).tokens))
    assert np.abs(got - ref).max() <= TOLERANCE


def test_greedy_over_unequal_workers_equals_transformers(files: Path, slice_cache: Path) -> None:
    path = gguf_file(files, "llama", "Q4_K")
    engine, runner = load_local_engine(
        convert_gguf(path), cache_dir=slice_cache, max_context=48,
        devices=[RelativeSpeed("a", 2.0), RelativeSpeed("b", 1.0)])
    try:
        got = list(engine.generate(PROMPT, max_new_tokens=12).token_ids)
    finally:
        runner.close()
    assert got == gf.transformers_greedy(path, PROMPT, 12)
    assert len(got) >= 8  # not a stop after a token or two


def test_converted_directory_is_an_ordinary_checkpoint(files: Path) -> None:
    path = gguf_file(files, "qwen2", "Q8_0")
    directory = convert_gguf(path)
    ckpt = Checkpoint(directory)
    assert directory.name == "qwen2-Q8_0"  # served and described under the file's name
    assert directory.parent.parent == default_gguf_cache()
    assert ckpt.config.model_type == "qwen2" and ckpt.config.tie_word_embeddings
    assert ckpt.config.qkv_bias and ckpt.config.eos_token_ids == (gf.bpe_vocab().eos,)
    assert ckpt.tensors["model.layers.0.self_attn.q_proj.weight"].dtype == "F32"
    assert ckpt.tensors["model.norm.weight"].dtype == "F32"
    source = json.loads((directory / "gguf.json").read_text())
    assert source["tensor_types"] == {"F32": 11, "Q8_0": 15}
    assert (directory / "tokenizer.json").is_file()
    assert json.loads((directory / "tokenizer_config.json").read_text())[
        "chat_template"] == gf.CHAT_TEMPLATE


def test_plain_types_are_copied_bit_for_bit(files: Path) -> None:
    path = gguf_file(files, "llama", "F16")
    ckpt = Checkpoint(convert_gguf(path))
    info = ckpt.tensors["model.layers.1.mlp.down_proj.weight"]
    assert info.dtype == "F16"
    import gguf

    stored = {t.name: t for t in gguf.GGUFReader(path).tensors}["blk.1.ffn_down.weight"]
    assert np.array_equal(ckpt.tensor("model.layers.1.mlp.down_proj.weight"),
                          np.asarray(stored.data, dtype=np.float32))


def test_cache_is_keyed_by_content(files: Path, tmp_path: Path) -> None:
    path = gguf_file(files, "llama", "Q8_0")
    first = convert_gguf(path)
    weights = first / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert convert_gguf(path) == first and weights.stat().st_mtime_ns == stamp
    renamed = tmp_path / "renamed.gguf"
    shutil.copyfile(path, renamed)
    assert convert_gguf(renamed) == first  # same bytes, other name: reused
    changed = gf.write_gguf(tmp_path / "llama-Q8_0.gguf", "llama", "Q8_0", seed=1)
    other = convert_gguf(changed)
    assert other != first and other.name == first.name
    assert not any(p.name.startswith(".") for p in first.parent.iterdir())  # no leftovers


def test_resolve_checkpoint_passes_directories_through(files: Path, tmp_path: Path) -> None:
    path = gguf_file(files, "llama", "F32")
    assert is_gguf(path) and not is_gguf(files) and not is_gguf(tmp_path / "missing.gguf")
    assert resolve_checkpoint(path) == convert_gguf(path)
    assert resolve_checkpoint(files) == files
    assert resolve_checkpoint(tmp_path / "nothing") == tmp_path / "nothing"
    with pytest.raises(CheckpointError, match="no GGUF file"):
        resolve_checkpoint(tmp_path / "missing.gguf")
    no_suffix = tmp_path / "model.bin"
    shutil.copyfile(path, no_suffix)
    assert is_gguf(no_suffix)  # recognised by its magic


def test_llama_qk_permutation_is_undone() -> None:
    rows, heads = 24, 3
    w = np.arange(rows * 2, dtype=np.float32).reshape(rows, 2)
    permuted = gf._permute(w, heads)
    assert not np.array_equal(permuted, w)
    assert np.array_equal(permuted[unpermute_rows(rows, heads)], w)


def test_llama3_rope_is_recovered_from_rope_freqs() -> None:
    # the parameters of the llama3 kind of tests/support/hf_checkpoints.py, and Llama 3.2's
    for factor, original, theta in ((8.0, 16, 500000.0), (32.0, 8192, 500000.0)):
        factors = _llama3_factors(64, theta, factor, 1.0, 4.0, original)
        got = llama3_rope(factors, 64, theta, "test")
        assert got == {"rope_scaling": {"rope_type": "llama3", "factor": factor,
                                        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                        "original_max_position_embeddings": original}}
    assert llama3_rope(np.ones(32, dtype=np.float32), 64, 1e4, "test") == {}


def test_environment_cache_dir_is_used() -> None:
    assert str(default_gguf_cache()).startswith(os.environ["EDGE_RUNTIME_CACHE_DIR"])


def test_llama3_rope_file_matches_the_original_model(files: Path, slice_cache: Path) -> None:
    """Llama 3.x files keep their RoPE scaling only as rope_freqs.weight (transformers'
    GGUF loader ignores it): the recovered scaling reproduces the original model."""
    extra = {"attention_bias": True, "num_key_value_heads": 1, "rope_scaling": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16}}
    path = gf.write_gguf(files / "llama3.gguf", "llama", "F32", extra=extra)
    directory = convert_gguf(path)
    assert json.loads((directory / "config.json").read_text())["rope_scaling"] == \
        extra["rope_scaling"]
    ids = IDS * 3  # past 16 positions, where the scaling changes the result
    engine, runner = load_local_engine(directory, cache_dir=slice_cache, max_context=48)
    try:
        got = engine.logits(ids)
    finally:
        runner.close()
    model = gf.hf_model("llama", gf.spm_vocab(), gf.SMALL, 0, extra)
    assert np.abs(got - gf.model_logits(model, ids)).max() <= TOLERANCE


def test_plan_reads_the_metadata_alone(files: Path, tmp_path: Path) -> None:
    path = gf.write_gguf(tmp_path / "plan-me.gguf", "qwen2", "Q6_K", seed=2)
    config_file = resolve_config(path)
    assert config_file.name == "plan-me.json"
    config = json.loads(config_file.read_text())
    assert config["model_type"] == "qwen2" and config["num_hidden_layers"] == 2
    digest = FileHashes.at().sha256(path)
    assert not list(default_gguf_cache().glob(f"{digest}*"))  # no weights converted
    assert resolve_config(files) == files
    out = subprocess.run([sys.executable, "-m", "edge_runtime.cli.main", "plan", "--llm",
                          str(path), "--devices", "raspberry-pi-5x2"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert "2 layers, hidden 256" in out.stdout


def test_serve_and_generate_arguments_take_a_gguf_file(files: Path) -> None:
    from edge_runtime.cli.serve import _check

    path = gguf_file(files, "llama", "Q8_0")
    args = argparse.Namespace(checkpoint=path, max_batch=1, max_queue=None, port=0,
                              drain_s=None)
    _check(args)
    assert args.checkpoint == convert_gguf(path)
