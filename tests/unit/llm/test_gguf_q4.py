"""`quantize="q4"` on a GGUF: what dequantize + re-quantize costs, and the exact re-pack.

The engine's 4-bit format (quant.py) and GGUF's Q4_0 are the same scheme (blocks of 32
inputs, one scale, codes 0..15 around 8), so a Q4_0 block re-packs into it exactly
(`q4_0_to_matmulnbits`). The path deployed today dequantizes to fp32 and re-quantizes;
measured here: at most half an engine step (max|w| of the block / 14) per weight on top
of the file's own rounding, for every GGUF type; and on the logits, no more than
quantizing the same model from fp32 costs (ratio of RMS logit errors, 4-bit from
the file over 4-bit from fp32, measured 0.95 for Q4_0 and 0.86 for Q4_K).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import support.gguf_files as gf
import support.gguf_quants as gq
from edge_runtime.llm import load_local_engine
from edge_runtime.llm.gguf import convert_gguf, q4_0_to_matmulnbits
from edge_runtime.llm.quant import dequantize_q4, quantize_q4

IDS = [1, 5, 17, 33, 99, 150, 7, 8, 9, 10, 11, 12, 3]


def weights(rows: int = 48, cols: int = 512, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=(rows, cols)) * 0.15).astype(np.float32)


def test_q4_0_repacks_exactly_into_the_engine_format() -> None:
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    w = weights()
    blocks = quantize(w, GGMLQuantizationType.Q4_0)
    packed, scales = q4_0_to_matmulnbits(blocks, *w.shape)
    ref_packed, ref_scales = quantize_q4(np.ascontiguousarray(w.T))
    assert packed.shape == ref_packed.shape and scales.shape == ref_scales.shape
    assert np.array_equal(dequantize_q4(packed, scales).T,
                          dequantize(blocks, GGMLQuantizationType.Q4_0))


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K"])
def test_requantizing_costs_at_most_half_an_engine_step(qtype: str) -> None:
    values = gq.dequantized(weights(), qtype)  # what the GGUF holds
    # a C-contiguous [K, N] copy: quantize_q4 must not see (and scale in place) `values`
    again = dequantize_q4(*quantize_q4(np.ascontiguousarray(values.T))).T
    step = np.abs(values.reshape(-1, 32)).max(axis=1, keepdims=True) / 7  # engine's scale
    error = np.abs(again - values).reshape(-1, 32)
    assert (error <= step / 2 + 1e-6).all()
    assert error.max() > 0  # it is a real loss: re-packing (for Q4_0) avoids it


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gguf_q4")


def q4_rms_error(path: Path, slice_cache: Path) -> float:
    engine, runner = load_local_engine(convert_gguf(path), cache_dir=slice_cache,
                                       max_context=32, quantize="q4")
    try:
        got = engine.logits(IDS)
    finally:
        runner.close()
    return float(np.sqrt(((got - gf.transformers_logits(path, IDS)) ** 2).mean()))


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_K"])
def test_q4_from_a_4bit_file_costs_no_more_than_from_fp32(qtype: str, files: Path,
                                                          slice_cache: Path) -> None:
    dims = gf.K_DIMS  # same model (seed) in both files
    quantized = q4_rms_error(gf.write_gguf(files / f"{qtype}.gguf", "llama", qtype, dims),
                             slice_cache)
    plain = q4_rms_error(gf.write_gguf(files / "F32.gguf", "llama", "F32", dims), slice_cache)
    assert quantized <= 1.1 * plain, (quantized, plain)
