"""What the server serves and what it is answering: `ServedModel` and `Inflight`.

`ServedModel` holds the deployment's static facts the HTTP side needs (name, context,
tokenizer, end tokens, chat template), read once before the scheduler's thread owns
the deployment, so no request handler ever touches the cluster. `Inflight` is the
registry of generations being answered, which shutdown cancels.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edge_runtime.serve.chat import ChatTemplate, load_chat_template

if TYPE_CHECKING:
    from edge_runtime.llm.tokenizer import LlmTokenizer
    from edge_runtime.sdk.handles import GenerationHandle
    from edge_runtime.sdk.llm import LlmDeployment


@dataclass(frozen=True)
class ServedModel:
    """What the HTTP side knows of the deployment, read once before serving."""

    name: str
    max_context: int
    eos_token_ids: tuple[int, ...]
    tokenizer: LlmTokenizer | None
    chat_template: ChatTemplate
    created: int

    @classmethod
    def of(cls, llm: LlmDeployment, name: str | None = None,
           chat_template: ChatTemplate | None = None) -> ServedModel:
        """From a deployment (call it before the scheduler owns it): the name defaults
        to the checkpoint directory's, the template to the checkpoint's own."""
        return cls(name or llm.checkpoint.name, llm.max_context,
                   tuple(llm.config.eos_token_ids), llm.engine.tokenizer,
                   chat_template or load_chat_template(llm.checkpoint), int(time.time()))


class Inflight:
    """The generations being answered, by response id, and the last ones finished:
    what a shutdown cancels and what an operator (or a test) inspects."""

    def __init__(self, keep: int = 256) -> None:
        self._lock = threading.Lock()
        self._active: dict[str, GenerationHandle] = {}
        self._finished: collections.OrderedDict[str, GenerationHandle] = \
            collections.OrderedDict()
        self._keep = keep

    def add(self, rid: str, handle: GenerationHandle) -> None:
        with self._lock:
            self._active[rid] = handle

    def end(self, rid: str) -> None:
        with self._lock:
            handle = self._active.pop(rid, None)
            if handle is not None:
                self._finished[rid] = handle
                while len(self._finished) > self._keep:
                    self._finished.popitem(last=False)

    def get(self, rid: str) -> GenerationHandle | None:
        with self._lock:
            return self._active.get(rid) or self._finished.get(rid)

    def snapshot(self) -> dict[str, GenerationHandle]:
        """The generations being answered now, by response id."""
        with self._lock:
            return dict(self._active)

    def cancel_all(self) -> None:
        with self._lock:
            handles = list(self._active.values())
        for handle in handles:
            handle.cancel()


__all__ = ["Inflight", "ServedModel"]
