"""What a fallback target is: something other than the cluster that answers a request.

The fallback chain (`policy.py`) walks "cluster" first, then these, in the order
the app gave. A target says its name (what `Result.served_by` shows) and whether it
is `cloud` (the request's bytes leave this device and LAN; a policy that forbids the
cloud skips it). It answers or raises `FallbackError` naming itself, so the chain
can say why each path failed.

Pipeline targets answer one inference (`infer`); LLM targets stream one generation
(`stream`). Both get what they need of the deployed model in a small record, not
the deployment itself, so targets import nothing of the coordinator.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from edge_runtime.llm.engine import TokenEvent
from edge_runtime.protocol import TensorSpec


@dataclass(frozen=True)
class ModelInfo:
    """The deployed ONNX model as a pipeline fallback needs it."""

    path: Path  # the app's copy of the model file that was deployed
    sha256: str  # of that file: the journal and remote targets key on it
    name: str
    inputs: tuple[TensorSpec, ...]  # the model's input signature
    outputs: tuple[str, ...]  # the model's final outputs, by name


@dataclass(frozen=True)
class Answer:
    """A fallback's answer to one inference."""

    outputs: dict[str, np.ndarray]
    served_by: str  # the target's name
    degraded: bool = False  # lower quality than the deployed model (an early exit, ...)
    exit: str | None = None  # the early exit that answered, when one did
    notes: tuple[str, ...] = field(default=())  # why degraded, in words


@runtime_checkable
class PipelineFallback(Protocol):
    """A target that can answer an inference of the deployed ONNX model."""

    @property
    def name(self) -> str: ...

    @property
    def cloud(self) -> bool: ...

    def infer(self, model: ModelInfo, inputs: Mapping[str, np.ndarray],
              timeout_s: float) -> Answer: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class GenerationRequest:
    """One generation, as the cluster got it; text and ids both, so a target with
    another tokenizer (or none: an HTTP endpoint) can serve it from the text."""

    prompt_ids: tuple[int, ...]
    prompt_text: str | None  # None when the app gave ids and there is no tokenizer
    max_new_tokens: int
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[int | str, ...] | None = None  # None: the model's own end tokens


@runtime_checkable
class LlmFallback(Protocol):
    """A target that can continue or serve a generation.

    `stream` yields `TokenEvent`s; `token_id` is the target's own token id, or -1
    when the target speaks text only (an HTTP endpoint). `degraded` says whether the
    target's answers are of lower quality than the deployed checkpoint (a smaller
    model)."""

    @property
    def name(self) -> str: ...

    @property
    def cloud(self) -> bool: ...

    @property
    def degraded(self) -> bool: ...

    def stream(self, request: GenerationRequest, timeout_s: float) -> Iterator[TokenEvent]: ...

    def close(self) -> None: ...


__all__ = ["Answer", "GenerationRequest", "LlmFallback", "ModelInfo", "PipelineFallback"]
