"""Choosing the next token from logits: greedy, temperature, top-k, top-p, seeded.

Why it mirrors Hugging Face's order (temperature, then top-k, then top-p on the
tempered distribution): a seed and the same settings should mean the same candidate
set as users know from `transformers.generate`. Randomness comes only from the
`numpy.random.Generator` passed in, so a seed reproduces a generation exactly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from edge_runtime.errors import GenerationError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 = greedy; top_k 0 = off; top_p 1.0 = off."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise GenerationError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise GenerationError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise GenerationError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


def filter_logits(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """Tempered log-weights (float64) with filtered-out tokens at -inf."""
    x = logits.astype(np.float64) / max(params.temperature, 1e-8)
    if 0 < params.top_k < x.size:
        kth = np.partition(x, -params.top_k)[-params.top_k]
        x = np.where(x < kth, -np.inf, x)
    if params.top_p < 1.0:
        order = np.argsort(x)  # ascending, as HF
        probs = np.exp(x[order] - x[order[-1]])
        probs /= probs.sum()
        cum = np.cumsum(probs)
        remove = cum <= 1.0 - params.top_p
        remove[-1] = False  # always keep the most likely token
        x[order[remove]] = -np.inf
    return x


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """The next token id from a [vocab] logits vector."""
    if logits.ndim != 1:
        raise GenerationError(f"sample() takes one logits row, got shape {logits.shape}")
    if params.greedy:
        return int(np.argmax(logits))
    x = filter_logits(logits, params)
    p = np.exp(x - x.max())
    p /= p.sum()
    return int(rng.choice(p.size, p=p))


__all__ = ["SamplingParams", "filter_logits", "sample"]
