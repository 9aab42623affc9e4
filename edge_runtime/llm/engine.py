"""`LlmEngine`: prefill, decode loop, sampling, stop tokens and streaming over any runner.

Why separate from the workers: generation logic (what to feed, when to stop, what to
stream) is the same whether the forward pass runs in threads of this process
(`local.LocalRunner`) or in agent processes behind ZeroMQ; a runner only has to
implement `forward(token_ids, start, last_only=...) -> logits`. A runner that can
sample where the logits are (`SamplingRunner`: agents whose hub samples, instead of
shipping a vocabulary of logits per token) is handed each step's sampling settings and
the generation's generator (`Draw`), and returns the token; it draws exactly what
`Decoding.accept` would, so a seed gives the same tokens either way. A runner that
also runs the decode loop itself (`DecodingRunner`: agents that feed each sampled token
back without asking the coordinator) is asked once per generation, not once per token.

Prefill feeds the whole prompt at once (matrix-matrix per layer) and computes logits
of the last position only; decode feeds one token at a time at the next position.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from edge_runtime.errors import ContextLengthError, GenerationError
from edge_runtime.llm.config import LlmConfig
from edge_runtime.llm.sampling import Draw, SamplingParams, sample
from edge_runtime.llm.tokenizer import LlmTokenizer, StreamDecoder

log = logging.getLogger(__name__)


class Runner(Protocol):
    """What the engine needs from a deployment of the forward pass."""

    @property
    def max_context(self) -> int: ...

    def forward(
        self, token_ids: Sequence[int], start: int, *, last_only: bool = True
    ) -> np.ndarray: ...


@runtime_checkable
class SamplingRunner(Runner, Protocol):
    """A runner that samples where the logits are: one token per item, drawn with the
    item's `Draw` (its generator advanced in place) exactly as `sample` would."""

    def forward_sampled(self, items: Sequence[BatchItem],
                        draws: Sequence[Draw]) -> list[int]: ...


@runtime_checkable
class DecodingRunner(SamplingRunner, Protocol):
    """A runner that runs the decode loop where the model is (the agents): one request
    for a run of tokens instead of one per token; each token is yielded as it arrives,
    and closing the iterator stops the run. It draws what `forward_sampled` would."""

    def decode_run(self, item: BatchItem, draw: Draw, max_tokens: int,
                   stop_ids: Collection[int]) -> Generator[int, None, None]: ...


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
        self.check_length(len(ids), 0)
        return self.runner.forward(ids, 0, last_only=False)

    def check_length(self, prompt: int, new: int) -> None:
        """Raise `ContextLengthError` unless `prompt` + `new` tokens fit the context."""
        if prompt + new > self.runner.max_context:
            raise ContextLengthError(prompt, new, self.runner.max_context)

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
        decoding = self.decoding(ids, max_new_tokens, params, stop)
        return self._loop(decoding, finish)

    def decoding(self, ids: list[int], max_new_tokens: int, params: SamplingParams,
                 stop: Sequence[int | str] | None) -> Decoding:
        """A checked generation's state, to be stepped by `_loop` or by a batch scheduler."""
        if max_new_tokens < 1:
            raise GenerationError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.check_length(len(ids), max_new_tokens)
        stops: list[int | str] = (list(self.config.eos_token_ids) if stop is None
                                  else list(stop))
        stop_texts = [s for s in stops if isinstance(s, str)]
        if stop_texts and self.tokenizer is None:
            raise GenerationError("stop strings need a tokenizer.json; pass stop token ids")
        decoder = StreamDecoder(self.tokenizer) if self.tokenizer is not None else None
        return Decoding(ids, max_new_tokens, params, stops, decoder)

    def _loop(self, decoding: Decoding, finish: list[str]) -> Iterator[TokenEvent]:
        runner = self.runner
        sampler = runner if isinstance(runner, SamplingRunner) else None
        if isinstance(runner, DecodingRunner):
            yield from self._runs(runner, decoding)
        while not decoding.finished:
            feed, start = decoding.feed, decoding.start
            if sampler is not None:  # sampled where the logits are: a token comes back
                item = BatchItem(0, tuple(feed), start)
                yield decoding.take(sampler.forward_sampled([item], [decoding.draw()])[0])
                continue
            logits = runner.forward(feed, start, last_only=True)
            yield decoding.accept(logits[-1])
        if decoding.finish_reason == "stop":
            finish.append("stop")


    @staticmethod
    def _runs(runner: DecodingRunner, decoding: Decoding) -> Iterator[TokenEvent]:
        """The generation's tokens from decode runs on the runner's side; a stop string
        (seen only here) or a closed stream ends the run early."""
        while not decoding.finished:
            item = BatchItem(0, tuple(decoding.feed), decoding.start)
            left = decoding.max_new_tokens - len(decoding.produced)
            run = runner.decode_run(item, decoding.draw(), left, decoding.stop_ids)
            before = len(decoding.produced)
            try:
                for token in run:
                    yield decoding.take(token)
                    if decoding.finished:
                        break
            finally:
                run.close()
            if len(decoding.produced) == before:
                raise GenerationError("the decode run ended without a token")


class Decoding:
    """One generation between forward steps: what to feed next and at which position,
    how to sample, when to stop, the text so far. The same state is stepped alone
    (`LlmEngine._loop`) or batched with others (a scheduler), so a sequence's tokens do
    not depend on what it is batched with."""

    def __init__(self, prompt_ids: list[int], max_new_tokens: int, params: SamplingParams,
                 stops: list[int | str], decoder: StreamDecoder | None) -> None:
        self.prompt_ids = tuple(prompt_ids)
        self.max_new_tokens = max_new_tokens
        self.params = params
        self.rng = np.random.default_rng(params.seed)
        self.stop_ids = {s for s in stops if isinstance(s, int)}
        self.stop_texts = [s for s in stops if isinstance(s, str)]
        self.decoder = decoder
        self.feed: list[int] = list(prompt_ids)  # the prefill first, then one token a step
        self.start = 0  # the position of feed[0]
        self.produced: list[int] = []
        self.text = ""
        self.finish_reason: str | None = None
        self.t0 = time.perf_counter()

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def draw(self) -> Draw:
        """What a `SamplingRunner` needs to sample this generation's next token."""
        return Draw(self.params, self.rng)

    def accept(self, logits: np.ndarray) -> TokenEvent:
        """Sample the next token from the last fed position's logits; set the next feed."""
        return self.take(sample(logits, self.params, self.rng))

    def take(self, token: int) -> TokenEvent:
        """The next token, sampled elsewhere with `draw()`; set the next feed."""
        token = int(token)
        piece = self.decoder.push(token) if self.decoder is not None else ""
        self.text += piece
        index = len(self.produced)
        self.produced.append(token)
        self.start += len(self.feed)
        self.feed = [token]
        if token in self.stop_ids or any(s in self.text for s in self.stop_texts):
            self.finish_reason = "stop"
        elif len(self.produced) >= self.max_new_tokens:
            self.finish_reason = "length"
        return TokenEvent(index, token, piece, time.perf_counter() - self.t0)


__all__ = ["BatchItem", "Decoding", "DecodingRunner", "Generation", "LlmEngine", "Runner",
           "SamplingRunner", "TokenEvent"]
