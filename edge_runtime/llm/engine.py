"""`LlmEngine`: prefill, decode loop, sampling, stop tokens and streaming over any runner.

Why separate from the workers: generation logic (what to feed, when to stop, what to
stream) is the same whether the forward pass runs in threads of this process
(`local.LocalRunner`) or in agent processes behind ZeroMQ; a runner only has to
implement `forward(token_ids, start, last_only=...) -> logits`.

Prefill feeds the whole prompt at once (matrix-matrix per layer) and computes logits
of the last position only; decode feeds one token at a time at the next position.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from edge_runtime.errors import GenerationError
from edge_runtime.llm.config import LlmConfig
from edge_runtime.llm.sampling import SamplingParams, sample
from edge_runtime.llm.tokenizer import LlmTokenizer, StreamDecoder

log = logging.getLogger(__name__)


class Runner(Protocol):
    """What the engine needs from a deployment of the forward pass."""

    @property
    def max_context(self) -> int: ...

    def forward(
        self, token_ids: Sequence[int], start: int, *, last_only: bool = True
    ) -> np.ndarray: ...


@dataclass(frozen=True)
class BatchItem:
    """One sequence's part of a batched step: its KV slot, the ids to feed, and the
    position of the first of them."""

    slot: int
    token_ids: tuple[int, ...]
    start: int


@dataclass(frozen=True)
class TokenEvent:
    """One generated token as it is produced."""

    index: int
    token_id: int  # -1 from a fallback that speaks text only (an HTTP endpoint)
    text: str
    seconds: float  # since the request started
    served_by: str = "cluster"  # "cluster", or the fallback target that produced it
    degraded: bool = False  # produced by a lower-quality fallback (a smaller model)


@dataclass(frozen=True)
class Generation:
    """A finished generation with its timings."""

    prompt_ids: tuple[int, ...]
    token_ids: tuple[int, ...]
    text: str
    finish_reason: str  # "stop" (a stop token or string) or "length"
    ttft_s: float
    s_per_token: float  # mean decode time per token after the first
    served_by: str = "cluster"  # who produced the tokens: "cluster", or a fallback's name
    degraded: bool = False  # some tokens came from a lower-quality fallback
    notes: tuple[str, ...] = ()  # failovers and fallbacks on the way, in words

    @property
    def tokens_per_s(self) -> float:
        return 1.0 / self.s_per_token if self.s_per_token > 0 else 0.0


class LlmEngine:
    """Generation over a runner; `logits()` for verification."""

    def __init__(
        self, runner: Runner, config: LlmConfig, tokenizer: LlmTokenizer | None = None
    ) -> None:
        self.runner = runner
        self.config = config
        self.tokenizer = tokenizer

    def encode(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise GenerationError(
                    "this checkpoint has no tokenizer.json: pass token ids instead of text"
                )
            ids = self.tokenizer.encode(prompt)
        else:
            ids = [int(t) for t in prompt]
        if not ids:
            raise GenerationError("the prompt is empty: give at least one token")
        bad = [t for t in ids if not 0 <= t < self.config.vocab]
        if bad:
            raise GenerationError(
                f"token ids {bad[:5]} are outside the vocabulary [0, {self.config.vocab})"
            )
        return ids

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits [len(ids), vocab] of a fresh sequence (positions 0..)."""
        ids = self.encode(ids)
        self._check_length(len(ids), 0)
        return self.runner.forward(ids, 0, last_only=False)

    def _check_length(self, prompt: int, new: int) -> None:
        ctx = self.runner.max_context
        if prompt + new > ctx:
            raise GenerationError(
                f"the prompt ({prompt} tokens) plus max_new_tokens ({new}) exceeds the context "
                f"of {ctx} tokens: shorten the prompt, ask for fewer tokens, or deploy with a "
                "larger max_context"
            )

    def stream(
        self,
        prompt: str | Sequence[int],
        max_new_tokens: int = 32,
        *,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[int | str] | None = None,
    ) -> Iterator[TokenEvent]:
        """Yield tokens as they are produced. `stop`: token ids and/or strings
        (default: the checkpoint's EOS ids); a stop token is yielded, then the stream ends."""
        params = SamplingParams(temperature, top_k, top_p, seed)
        return self._run(self.encode(prompt), max_new_tokens, params, stop, [])

    def generate(
        self,
        prompt: str | Sequence[int],
        max_new_tokens: int = 32,
        *,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[int | str] | None = None,
    ) -> Generation:
        """Generate to completion; see `stream` for the arguments."""
        params = SamplingParams(temperature, top_k, top_p, seed)
        prompt_ids = self.encode(prompt)
        finish: list[str] = []
        events = list(self._run(prompt_ids, max_new_tokens, params, stop, finish))
        ids = tuple(e.token_id for e in events)
        text = "".join(e.text for e in events)
        ttft = events[0].seconds if events else 0.0
        per_token = (events[-1].seconds - ttft) / (len(events) - 1) if len(events) > 1 else 0.0
        return Generation(
            tuple(prompt_ids), ids, text, finish[0] if finish else "length", ttft, per_token
        )

    def _run(
        self,
        ids: list[int],
        max_new_tokens: int,
        params: SamplingParams,
        stop: Sequence[int | str] | None,
        finish: list[str],
    ) -> Iterator[TokenEvent]:
        """Check the request and start the loop; `ids` come from `encode`. Not a generator,
        so a bad request raises at the call of `stream`, not at its first token."""
        if max_new_tokens < 1:
            raise GenerationError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self._check_length(len(ids), max_new_tokens)
        stops = list(self.config.eos_token_ids) if stop is None else list(stop)
        stop_ids = {s for s in stops if isinstance(s, int)}
        stop_texts = [s for s in stops if isinstance(s, str)]
        if stop_texts and self.tokenizer is None:
            raise GenerationError("stop strings need a tokenizer.json; pass stop token ids")
        decoder = StreamDecoder(self.tokenizer) if self.tokenizer is not None else None
        rng = np.random.default_rng(params.seed)
        return self._loop(ids, max_new_tokens, params, rng, stop_ids, stop_texts, decoder, finish)

    def _loop(
        self,
        ids: list[int],
        max_new_tokens: int,
        params: SamplingParams,
        rng: np.random.Generator,
        stop_ids: set[int],
        stop_texts: list[str],
        decoder: StreamDecoder | None,
        finish: list[str],
    ) -> Iterator[TokenEvent]:
        t0 = time.perf_counter()
        logits = self.runner.forward(ids, 0, last_only=True)
        pos = len(ids)
        text = ""
        for i in range(max_new_tokens):
            token = sample(logits[-1], params, rng)
            piece = decoder.push(token) if decoder is not None else ""
            text += piece
            yield TokenEvent(i, token, piece, time.perf_counter() - t0)
            if token in stop_ids or any(s in text for s in stop_texts):
                finish.append("stop")
                return
            if i + 1 < max_new_tokens:
                logits = self.runner.forward([token], pos, last_only=True)
                pos += 1


__all__ = ["BatchItem", "Generation", "LlmEngine", "Runner", "TokenEvent"]
