"""`LocalCheckpoint`: an LLM fallback that runs a checkpoint on this device, in-process.

Why: when the cluster is away, a (usually smaller) checkpoint on the app's own device
still answers, with no byte leaving it. It runs through the same engine as the
cluster (`load_local_engine`, one in-process worker), loaded on first use and kept,
so a chain that never falls back never pays for it.

The checkpoint may speak another vocabulary than the deployed one, so the prompt is
re-encoded from its text with this checkpoint's tokenizer whenever the request has
text; token ids are used as they are only without text, and only when they fall
inside this vocabulary. Stop token ids belong to the cluster's vocabulary: they are
kept only when the prompt came as ids, and replaced by this checkpoint's own end
tokens when the prompt is re-encoded (stop strings always apply).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from devices.cache import ENV_CACHE_DIR
from edge_runtime.errors import USER_ERRORS, FallbackError
from edge_runtime.llm.engine import LlmEngine, TokenEvent
from edge_runtime.llm.local import LocalRunner, load_local_engine
from edge_runtime.llm.window import WindowStats
from edge_runtime.sdk.fallback.local_model import default_budget
from edge_runtime.sdk.fallback.targets import GenerationRequest
from edge_runtime.units import parse_size

log = logging.getLogger(__name__)

#: The subfolder of the user's edge-runtime cache that holds converted fallback checkpoints.
CACHE_SUBDIR = "fallback-llm"
# What loading a checkpoint can raise that is the checkpoint's or the device's fault.
_LOAD_ERRORS: tuple[type[Exception], ...] = (*USER_ERRORS, OSError)


def default_cache_dir() -> Path:
    """$EDGE_RUNTIME_CACHE_DIR/fallback-llm, else ~/.cache/edge-runtime/fallback-llm."""
    base = os.environ.get(ENV_CACHE_DIR)
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "edge-runtime"
    return root / CACHE_SUBDIR


class LocalCheckpoint:
    """A Hugging Face checkpoint (Llama/Mistral/Qwen2) served on this device.

    `max_context` bounds prompt plus new tokens (its KV cache is preallocated);
    `memory_budget` ("2GB", bytes; default: half of the memory available when it loads)
    caps the weights held resident: a checkpoint larger than that streams through the
    layer window from disk instead of exhausting this device's memory;
    `quantize="q4"` loads 4-bit weights (resident only); `degraded` says whether its answers are of
    lower quality than the deployed model's (True for a smaller model; the chain's
    "local" entry runs the deployed checkpoint itself with `degraded=False`)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        max_context: int = 512,
        quantize: str | None = None,
        degraded: bool = True,
        memory_budget: int | str | None = None,
    ) -> None:
        self.path = Path(os.path.abspath(Path(path).expanduser()))
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else (
            default_cache_dir())
        self.max_context = max_context
        self.quantize = quantize
        self.memory_budget = None if memory_budget is None else parse_size(memory_budget)
        self._degraded = degraded
        self._name = f"local:{self.path.name}"
        self._lock = threading.Lock()
        self._engine: LlmEngine | None = None
        self._runner: LocalRunner | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def cloud(self) -> bool:
        return False

    @property
    def degraded(self) -> bool:
        return self._degraded

    def _fail(self, message: str) -> FallbackError:
        return FallbackError(message, target=self._name)

    def engine(self) -> LlmEngine:
        """The loaded engine (loading, converting and planning it on first use)."""
        with self._lock:
            if self._engine is not None:
                return self._engine
            if not self.path.is_dir():
                raise self._fail(
                    f"checkpoint directory {self.path} does not exist: give the directory of "
                    "a Hugging Face checkpoint (config.json and *.safetensors) on this device"
                )
            t0 = time.perf_counter()
            try:
                budget = self.memory_budget
                if budget is None and self.quantize is None:  # 4-bit shares stay resident
                    budget = default_budget()
                engine, runner = load_local_engine(
                    self.path,
                    cache_dir=self.cache_dir,
                    memory_budgets=[budget],
                    max_context=self.max_context,
                    quantize=self.quantize,
                )
            except _LOAD_ERRORS as exc:
                raise self._fail(f"cannot load checkpoint {self.path}: {exc}") from exc
            log.info("%s: loaded in %.2f s", self._name, time.perf_counter() - t0)
            self._engine, self._runner = engine, runner
            return engine

    def window_stats(self) -> list[WindowStats]:
        """The layer window's counters (empty before the first load)."""
        return [] if self._runner is None else self._runner.stats()

    def stream(self, request: GenerationRequest, timeout_s: float) -> Iterator[TokenEvent]:
        """Generate on this device; a bad request or a failed load raises `FallbackError`
        at the call, a generation that outlives `timeout_s` raises it between tokens."""
        deadline = time.monotonic() + timeout_s
        engine = self.engine()
        prompt = self._encode(engine, request)
        stop = self._stop(engine, request)
        try:
            events = engine.stream(
                prompt,
                request.max_new_tokens,
                temperature=request.temperature,
                top_k=request.top_k,
                top_p=request.top_p,
                seed=request.seed,
                stop=stop,
            )
        except USER_ERRORS as exc:
            raise self._fail(str(exc)) from exc
        return self._timed(events, deadline, timeout_s)

    def _encode(self, engine: LlmEngine, request: GenerationRequest) -> list[int]:
        """This checkpoint's ids of the prompt: from the text when there is text and a
        tokenizer here, else the request's ids when all fall inside this vocabulary."""
        try:
            if request.prompt_text is not None and engine.tokenizer is not None:
                return engine.encode(request.prompt_text)
            vocab = engine.config.vocab
            outside = [t for t in request.prompt_ids if not 0 <= t < vocab]
            if outside:
                why = ("the request has no prompt text" if request.prompt_text is None
                       else "this checkpoint has no tokenizer.json to encode the prompt text")
                raise self._fail(
                    f"prompt token ids {outside[:5]} are outside this checkpoint's vocabulary "
                    f"[0, {vocab}) and cannot be mapped without text: {why}; give the prompt "
                    "as text, or use a checkpoint with the deployed model's vocabulary"
                )
            return engine.encode(request.prompt_ids)
        except USER_ERRORS as exc:
            if isinstance(exc, FallbackError):
                raise
            raise self._fail(str(exc)) from exc

    @staticmethod
    def _stop(engine: LlmEngine, request: GenerationRequest) -> list[int | str] | None:
        """The stops in this checkpoint's terms (None: its own end tokens)."""
        if request.stop is None:
            return None
        if request.prompt_text is None:
            return list(request.stop)
        texts: list[int | str] = [s for s in request.stop if isinstance(s, str)]
        if len(texts) < len(request.stop):  # the cluster's stop ids: ours are its end tokens
            texts.extend(engine.config.eos_token_ids)
        return texts

    def _timed(
        self, events: Iterator[TokenEvent], deadline: float, timeout_s: float
    ) -> Iterator[TokenEvent]:
        """The events, none produced past the deadline (the engine cannot be interrupted
        inside a forward pass, so a late one raises instead of being yielded)."""
        for event in events:
            if time.monotonic() > deadline:
                raise self._fail(
                    f"the generation did not finish within {timeout_s:.1f} s "
                    f"({event.index} tokens yielded): allow a longer timeout or ask for "
                    "fewer tokens"
                )
            yield event

    def close(self) -> None:
        """Release the engine's memory and threads; the next `stream` loads it again."""
        with self._lock:
            runner, self._runner, self._engine = self._runner, None, None
        if runner is not None:
            runner.close()


__all__ = ["CACHE_SUBDIR", "LocalCheckpoint", "default_cache_dir"]
