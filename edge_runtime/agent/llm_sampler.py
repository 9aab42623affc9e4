"""The end of an llm-shard step: what each member sends the hub, and the hub's draw.

Why apart from `llm_shard.py`: the share's worker decides *when* a step ends; this
module decides *what* crosses the group at its end. A step that asks for logits
(`llm_step` without `sampling`: `logits()`, replays) gathers every member's logits
columns to the hub, as before. A step with `sampling` is answered with tokens: the hub
samples with the engine's own `sample` and the generator state the coordinator sent,
so the tokens are the ones the coordinator would have drawn; and when every sequence
is greedy or top-k, the members send only their candidates (`llm.candidates`: one
logit and id per greedy sequence) instead of vocab/N floats each.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge_runtime.llm.candidates import candidate_ks, local_candidates, merge_candidates
from edge_runtime.llm.sampling import SamplingParams, rng_from_state, rng_state, sample
from edge_runtime.protocol import StepSampling

# `sample` takes a generator even for a greedy row, which draws nothing from it.
_UNUSED_RNG = np.random.default_rng(0)


class HubSampler:
    """One step's gather payload per member, the hub's logits rows, and its draw."""

    def __init__(self, sampling: Sequence[StepSampling], vocab: int, offset: int) -> None:
        """`sampling`: the step's (empty: answer logits); `offset`: the vocabulary id of
        this member's first logits column."""
        self.sampling = tuple(sampling)
        self.params = [SamplingParams(s.temperature, s.top_k, s.top_p) for s in sampling]
        self._ks = candidate_ks(self.params, vocab) if sampling else None
        self._vocab = vocab
        self._offset = offset

    @property
    def candidates(self) -> bool:
        """True when the members send candidates, not their logits columns."""
        return self._ks is not None

    def payload(self, local: np.ndarray) -> np.ndarray:
        """What this member sends the hub for its logits columns `local` [rows, n]."""
        if self._ks is None:
            return np.ascontiguousarray(local, dtype=np.float32)
        return local_candidates(local, self._offset, self._ks)

    def rows(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        """On the hub: the step's logits [rows, vocab] from every member's payload in rank
        order (candidates at their ids, -inf elsewhere, in candidate mode)."""
        if self._ks is None:
            return np.concatenate(parts, axis=-1)
        return merge_candidates(parts, len(self._ks), self._vocab)

    def draw(self, logits: np.ndarray) -> tuple[tuple[int, ...], tuple[bytes, ...]]:
        """Each sequence's next token and its generator's state after the draw (empty for
        a greedy one, which draws nothing); GenerationError for a bad generator state."""
        tokens: list[int] = []
        states: list[bytes] = []
        for row, params, spec in zip(logits, self.params, self.sampling, strict=True):
            if params.greedy:
                tokens.append(sample(row, params, _UNUSED_RNG))
                states.append(b"")
                continue
            rng = rng_from_state(spec.rng)
            tokens.append(sample(row, params, rng))
            states.append(rng_state(rng))
        return tuple(tokens), tuple(states)


__all__ = ["HubSampler"]
