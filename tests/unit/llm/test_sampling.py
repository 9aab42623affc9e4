"""Sampling filters against transformers' logits warpers, and seeded reproducibility."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.errors import GenerationError
from edge_runtime.llm import SamplingParams, sample
from edge_runtime.llm.sampling import filter_logits


@pytest.mark.parametrize(
    "temperature, top_k, top_p", [(1.0, 5, 1.0), (0.7, 0, 0.9), (1.3, 20, 0.5), (1.0, 0, 0.3)]
)
def test_filters_match_transformers(temperature: float, top_k: int, top_p: float) -> None:
    import torch
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    rng = np.random.default_rng(0)
    logits = rng.normal(size=64).astype(np.float32) * 3
    procs = LogitsProcessorList([TemperatureLogitsWarper(temperature)])
    if top_k:
        procs.append(TopKLogitsWarper(top_k))
    if top_p < 1:
        procs.append(TopPLogitsWarper(top_p))
    ref = procs(torch.zeros(1, 1, dtype=torch.long), torch.from_numpy(logits[None].copy()))[
        0
    ].numpy()
    ours = filter_logits(logits, SamplingParams(temperature, top_k, top_p))
    np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(ref))
    kept = np.isfinite(ref)
    np.testing.assert_allclose(ours[kept], ref[kept], rtol=1e-5)


def test_greedy_is_argmax() -> None:
    logits = np.array([0.1, 3.0, 2.9], dtype=np.float32)
    rng = np.random.default_rng(0)
    assert sample(logits, SamplingParams(), rng) == 1
    assert sample(logits, SamplingParams(temperature=2.0, top_k=1), rng) == 1


def test_sampling_follows_the_distribution_and_the_seed() -> None:
    logits = np.log(np.array([0.5, 0.3, 0.2], dtype=np.float32))
    params = SamplingParams(temperature=1.0)
    draws = [sample(logits, params, np.random.default_rng(s)) for s in range(3000)]
    freq = np.bincount(draws, minlength=3) / len(draws)
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.2], atol=0.03)
    a = [sample(logits, params, rng) for rng in [np.random.default_rng(5)] for _ in range(50)]
    b = [sample(logits, params, rng) for rng in [np.random.default_rng(5)] for _ in range(50)]
    assert a == b


def test_top_k_never_samples_outside() -> None:
    logits = np.arange(10, dtype=np.float32)
    rng = np.random.default_rng(1)
    draws = {sample(logits, SamplingParams(temperature=5.0, top_k=3), rng) for _ in range(300)}
    assert draws == {7, 8, 9}


@pytest.mark.parametrize(
    "kw", [{"temperature": -0.1}, {"top_k": -1}, {"top_p": 1.5}, {"top_p": 0.0}]
)
def test_bad_parameters(kw: dict[str, float]) -> None:
    with pytest.raises(GenerationError):
        SamplingParams(**kw)  # type: ignore[arg-type]
