"""Choosing the next token from logits: greedy, temperature, top-k, top-p, seeded.

Why it mirrors Hugging Face's order (temperature, then top-k, then top-p on the
tempered distribution): a seed and the same settings should mean the same candidate
set as users know from `transformers.generate`. Randomness comes only from the
`numpy.random.Generator` passed in, so a seed reproduces a generation exactly.

Sampling elsewhere (where the logits are: an LLM group's hub) stays exact: the same
`sample` runs there on the same row, with the generator's state sent along with the
step (`rng_state` / `rng_from_state`) and brought back advanced (`set_rng_state`), so
a seeded generation draws the same tokens wherever it is sampled.
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


@dataclass(frozen=True)
class Draw:
    """One row to be sampled by someone else (a runner that samples where the logits
    are): the settings and the generation's generator, which the sampler advances."""

    params: SamplingParams
    rng: np.random.Generator


# PCG64's state: 128-bit state and increment, the buffered-uint32 flag and value.
RNG_STATE_BYTES = 37


def rng_state(rng: np.random.Generator) -> bytes:
    """`rng`'s exact state as bytes (PCG64, numpy's default), to sample elsewhere."""
    state = rng.bit_generator.state
    if state.get("bit_generator") != "PCG64":
        raise GenerationError(f"sampling elsewhere needs a PCG64 generator "
                              f"(np.random.default_rng), not {state.get('bit_generator')}")
    inner = state["state"]
    return (int(inner["state"]).to_bytes(16, "little") + int(inner["inc"]).to_bytes(16, "little")
            + bytes([int(state["has_uint32"]) & 1])
            + int(state["uinteger"]).to_bytes(4, "little"))


def set_rng_state(rng: np.random.Generator, data: bytes) -> None:
    """Put `rng` (PCG64) in the state `rng_state` returned."""
    if len(data) != RNG_STATE_BYTES:
        raise GenerationError(f"a generator state is {RNG_STATE_BYTES} bytes, got {len(data)}")
    rng.bit_generator.state = {
        "bit_generator": "PCG64",
        "state": {"state": int.from_bytes(data[:16], "little"),
                  "inc": int.from_bytes(data[16:32], "little")},
        "has_uint32": data[32], "uinteger": int.from_bytes(data[33:37], "little")}


def rng_from_state(data: bytes) -> np.random.Generator:
    """A generator in the state `rng_state` returned."""
    rng = np.random.Generator(np.random.PCG64())
    set_rng_state(rng, data)
    return rng


def filter_logits(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """Tempered log-weights (float64) with filtered-out tokens at -inf."""
    x = logits.astype(np.float64) / max(params.temperature, 1e-8)
    if 0 < params.top_k < x.size:
        # the k-th largest, found among the entries not -inf: the same value, and fast on
        # a row that is mostly -inf (a hub's merged candidates), where np.partition over
        # the whole row degrades twentyfold on the many equal entries
        live = x[~np.isneginf(x)]
        k = params.top_k
        kth = np.partition(live, -k)[-k] if live.size >= k else -np.inf
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


__all__ = ["RNG_STATE_BYTES", "Draw", "SamplingParams", "filter_logits", "rng_from_state",
           "rng_state", "sample", "set_rng_state"]
