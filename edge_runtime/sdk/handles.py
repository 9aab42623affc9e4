"""`GenerationHandle`: one submitted generation as its caller sees it.

The thread-safe side of `GenerationScheduler`: the caller reads tokens from the
handle's queue and may cancel; the scheduler's thread emits into it and finishes it.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from edge_runtime.llm.engine import Generation, TokenEvent


@dataclass(frozen=True)
class GenerationRequestSpec:
    """One generation as submitted (already encoded to ids)."""

    prompt_ids: tuple[int, ...]
    max_new_tokens: int
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[int | str, ...] | None = None
    key: str | None = None  # its journal key (None: one is made up)


_END = object()  # the handle's queue: no more events


class GenerationHandle:
    """One submitted generation: its tokens as they come, its end, and `cancel()`."""

    def __init__(self, handle_id: str, spec: GenerationRequestSpec) -> None:
        self.id = handle_id
        self.spec = spec
        self.finish_reason: str | None = None  # "stop", "length" or "cancelled" once done
        self.error: BaseException | None = None
        self.submitted = time.monotonic()
        self._events: queue.Queue[object] = queue.Queue()
        self._cancelled = threading.Event()
        self._done = threading.Event()
        self._produced: list[TokenEvent] = []

    @property
    def prompt_tokens(self) -> int:
        return len(self.spec.prompt_ids)

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Stop the generation before its next token (or drop it if still queued)."""
        self._cancelled.set()

    def events(self, timeout_s: float | None = None) -> Iterator[TokenEvent]:
        """Each token as it is produced; the generation's error, if any, at the end.
        `timeout_s` bounds the wait for each token (queue.Empty past it)."""
        while True:
            item = self._events.get(timeout=timeout_s)
            if item is _END:
                self._events.put(_END)  # a second reader ends too
                if self.error is not None:
                    raise self.error
                return
            assert isinstance(item, TokenEvent)
            yield item

    def next_event(self, timeout_s: float | None = None) -> TokenEvent | None:
        """The next token, or None at the end (raises the generation's error there)."""
        item = self._events.get(timeout=timeout_s)
        if item is _END:
            self._events.put(_END)
            if self.error is not None:
                raise self.error
            return None
        assert isinstance(item, TokenEvent)
        return item

    def result(self, timeout_s: float | None = None) -> Generation:
        """Wait for the end; the whole generation (its error raised)."""
        events = list(self.events(timeout_s))
        ids = tuple(e.token_id for e in events)
        ttft = events[0].seconds if events else 0.0
        per = (events[-1].seconds - ttft) / (len(events) - 1) if len(events) > 1 else 0.0
        servers = list(dict.fromkeys(e.served_by for e in events)) or ["cluster"]
        return Generation(self.spec.prompt_ids, ids, "".join(e.text for e in events),
                          self.finish_reason or "length", ttft, per, served_by=servers[-1],
                          degraded=any(e.degraded for e in events))

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the generation ended (or `timeout_s`); True if it did."""
        return self._done.wait(timeout_s)

    # --- the scheduler's side ---

    def _emit(self, event: TokenEvent) -> None:
        self._produced.append(event)
        self._events.put(event)

    def _finish(self, reason: str | None, error: BaseException | None = None) -> None:
        self.finish_reason = reason
        self.error = error
        self._done.set()
        self._events.put(_END)


__all__ = ["GenerationHandle", "GenerationRequestSpec"]
