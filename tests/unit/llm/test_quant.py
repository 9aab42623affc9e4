"""4-bit weights: quantisation bounds, the onnxruntime kernel, and the engine with them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_runtime.errors import ConfigError
from edge_runtime.llm import RelativeSpeed, load_local_engine
from edge_runtime.llm.quant import Q4MatMul, dequantize_q4, quantize_q4

TINYLM = Path(__file__).resolve().parents[3] / "examples" / "tinylm" / "checkpoint"


def test_quantisation_error_is_within_half_a_step() -> None:
    w = np.random.default_rng(0).standard_normal((128, 40), dtype=np.float32)
    packed, scales = quantize_q4(w)
    assert packed.shape == (40, 4, 16) and packed.dtype == np.uint8 and scales.shape == (160,)
    err = np.abs(dequantize_q4(packed, scales) - w)
    step = np.repeat(scales.reshape(40, 4), 32, axis=1).T  # [K, N] scale of each weight
    assert (err <= step / 2 + 1e-6).all()


def test_kernel_matches_the_dequantised_matrix() -> None:
    rng = np.random.default_rng(1)
    w = rng.standard_normal((256, 96), dtype=np.float32)
    x = rng.standard_normal((3, 256), dtype=np.float32)
    ref = x @ dequantize_q4(*quantize_q4(w))
    got = Q4MatMul(w)(x)
    # int8 activations (accuracy_level=4) add a small relative error
    assert np.abs(got - ref).max() <= 0.02 * np.abs(ref).max()


def test_engine_with_4bit_weights_tracks_fp32(tmp_path: Path) -> None:
    ids = list(b"Permission is hereby granted, free of charge, to any person")
    devices = [RelativeSpeed("a", 1.0), RelativeSpeed("b", 1.0)]
    fp32, r1 = load_local_engine(TINYLM, cache_dir=tmp_path, devices=devices, max_context=128)
    q4, r2 = load_local_engine(
        TINYLM, cache_dir=tmp_path, devices=devices, max_context=128, quantize="q4"
    )
    try:
        a, b = fp32.logits(ids), q4.logits(ids)
        text = q4.generate("Permission is hereby granted", 40).text
        stats = r2.stats()
    finally:
        r1.close()
        r2.close()
    assert np.abs(a - b).max() < 0.1 * np.abs(a).max()
    assert (a.argmax(axis=1) == b.argmax(axis=1)).mean() >= 0.9
    assert sum(w.isalpha() for w in text.split()) >= 4
    fp32_bytes = sum(b.nbytes for w in r1.workers for b in w.blocks)
    assert sum(s.budget_bytes for s in stats) < 0.5 * fp32_bytes


def test_4bit_needs_a_resident_share(tmp_path: Path) -> None:
    from partitioner.tensor import ACTIVATION_RESERVE_BYTES

    small = ACTIVATION_RESERVE_BYTES + (1 << 20)  # 1 MB for weights; the 4-bit share needs ~1.2
    with pytest.raises(ConfigError, match="resident"):
        load_local_engine(
            TINYLM, cache_dir=tmp_path, memory_budgets=[small], max_context=64, quantize="q4"
        )
    roomy = ACTIVATION_RESERVE_BYTES + (48 << 20)  # measured: 34 MiB with onnxruntime's own
    _, runner = load_local_engine(
        TINYLM, cache_dir=tmp_path, memory_budgets=[roomy], max_context=64, quantize="q4"
    )
    runner.close()
    with pytest.raises(ConfigError, match="q8"):
        load_local_engine(TINYLM, cache_dir=tmp_path, max_context=64, quantize="q8")
