"""`GenerationScheduler`: one thread that owns an LLM deployment, fed by a queue.

Why: the coordinator's sockets belong to one thread, and an HTTP server (or an app)
has many callers. Callers `submit` a generation from any thread and read its tokens
from a `GenerationHandle` (a thread-safe queue); the scheduler thread runs the
generations and is the only one that touches the cluster.

With a deployment of `max_batch` B > 1 it batches continuously: up to B generations
share each forward step (a KV cache slot each on every agent; one matrix product and
one allreduce per layer for all of them), a new request joins at the next step with
its prompt fed as its part of that step (a prefill next to the others' one-token
decodes: no separate prefill step, so the running streams never pause for it), and a
finished or cancelled one frees its slot at once. Each sequence's tokens are what
they would be alone. Batched generations fail over across agents like any other (the
runner replays every slot); when the cluster goes away mid-batch, each sequence is
finished on the deployment's fallback chain from the tokens it already handed out.
With a journal on the cluster every generation is journaled before its first step
and marked delivered once its last token is handed out, batched or not (B = 1 goes
through `LlmDeployment.generate`; batched ones through `open_entry`/`close_entry`):
if the process dies, `Cluster.resume()` runs the unfinished ones again. A generation
its caller cancelled is closed as failed, so no later process runs it.

A cancelled handle (a client that went away) stops its generation before the next
token; a full queue refuses new work with `QueueFullError` (HTTP 429); `close()`
stops accepting, then finishes or cancels what is queued and running.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from edge_runtime.errors import (
    ClusterUnavailableError,
    ConfigError,
    DuplicateRequestError,
    GenerationError,
    JournalError,
    QueueFullError,
)
from edge_runtime.llm.engine import BatchItem, Decoding, Generation, TokenEvent
from edge_runtime.llm.sampling import SamplingParams
from edge_runtime.sdk.fallback.targets import GenerationRequest
from edge_runtime.sdk.handles import GenerationHandle, GenerationRequestSpec
from edge_runtime.sdk.tickets import Ticket

if TYPE_CHECKING:
    from edge_runtime.sdk.llm import LlmDeployment

log = logging.getLogger(__name__)

# Requests waiting (not running) before `submit` answers QueueFullError.
DEFAULT_MAX_QUEUE = 64
# How long `generate_many` waits before trying a full queue again.
QUEUE_FULL_WAIT_S = 0.1
# How long `close()` lets running and queued generations finish by default.
DEFAULT_DRAIN_S = 30.0
# The reason a cancelled generation's journal entry is closed with (it is not resumed).
CANCELLED = GenerationError("cancelled by its caller")


class GenerationScheduler:
    """Runs the generations submitted from any thread on one thread that owns `llm`."""

    def __init__(self, llm: LlmDeployment, *, max_queue: int = DEFAULT_MAX_QUEUE) -> None:
        if max_queue < 1:
            raise ConfigError(f"max_queue must be at least 1, got {max_queue}")
        self.llm = llm
        self.max_queue = max_queue
        self._queue: queue.Queue[GenerationHandle | None] = queue.Queue()
        self._ids = itertools.count(1)
        self._accepting = True
        self._lock = threading.Lock()
        self._active: dict[int, GenerationHandle] = {}  # by KV slot
        self._thread = threading.Thread(target=self._loop, name="generation-scheduler",
                                        daemon=True)
        self._started = False

    def start(self) -> GenerationScheduler:
        if not self._started:
            self._started = True
            self._thread.start()
        return self

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    @property
    def running(self) -> int:
        return len(self._active)

    def submit(self, prompt: str | Sequence[int], max_new_tokens: int, *,
               temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
               seed: int | None = None, stop: Sequence[int | str] | None = None,
               key: str | None = None) -> GenerationHandle:
        """Queue a generation; its handle streams the tokens. Raises at once, from the
        caller's thread: `GenerationError` (empty prompt, ids outside the vocabulary, a
        prompt plus `max_new_tokens` longer than the context), `QueueFullError`,
        `ConfigError` once closed. `key`: the journal key (an idempotency key: a key
        already in the journal raises `DuplicateRequestError` when the step opens it)."""
        engine = self.llm.engine
        ids = engine.encode(prompt)
        if max_new_tokens < 1:
            raise GenerationError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        engine.check_length(len(ids), max_new_tokens)
        spec = GenerationRequestSpec(tuple(ids), max_new_tokens, temperature, top_k, top_p,
                                     seed, None if stop is None else tuple(stop), key)
        with self._lock:
            if not self._accepting:
                raise ConfigError("the scheduler is shutting down and takes no new requests")
            if self._queue.qsize() >= self.max_queue:
                raise QueueFullError(f"{self.max_queue} requests are already waiting; "
                                     "retry later")
            handle = GenerationHandle(f"gen-{next(self._ids)}", spec)
            self._queue.put(handle)
        return handle

    def generate_many(self, prompts: Sequence[str | Sequence[int]], max_new_tokens: int,
                      **options: object) -> list[Generation]:
        """Submit every prompt, then wait for all: batched `max_batch` at a time through
        the agents, each equal to its own `generate` (the SDK's way to batch without
        HTTP: `GenerationScheduler(llm).start().generate_many(prompts, n)`)."""
        handles: list[GenerationHandle] = []
        for prompt in prompts:
            while True:
                try:
                    handles.append(self.submit(prompt, max_new_tokens, **options))  # type: ignore[arg-type]
                    break
                except QueueFullError:  # more prompts than the queue holds: wait a little
                    waiting = [h for h in handles if not h.done()]
                    if waiting:
                        waiting[0].wait(QUEUE_FULL_WAIT_S)
                    else:  # the queue is full of other callers' requests
                        time.sleep(QUEUE_FULL_WAIT_S)
        return [h.result() for h in handles]

    def close(self, *, cancel: bool = False, timeout_s: float = DEFAULT_DRAIN_S) -> None:
        """Stop accepting; let queued and running generations finish (or cancel them),
        then stop the thread. The deployment itself is the caller's to unload."""
        with self._lock:
            self._accepting = False
        if cancel:
            self._cancel_all()
        self._queue.put(None)
        if self._started:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("generations still running after %.0f s: cancelling them",
                            timeout_s)
                self._cancel_all()
                self._thread.join(timeout_s)
        while True:  # never run (not started, or behind the stop): their readers must end
            try:
                left = self._queue.get_nowait()
            except queue.Empty:
                break
            if left is not None and not left.done():
                left._finish("cancelled")

    def _cancel_all(self) -> None:
        for running in self._active.copy().values():  # copy(): atomic under the GIL
            running.cancel()
        for handle in list(self._queue.queue):
            if handle is not None:
                handle.cancel()

    # --- the scheduler's thread ---

    def _loop(self) -> None:
        if self.llm.max_batch > 1:
            self._batched_loop(self.llm.max_batch)
            return
        while True:
            handle = self._queue.get()
            if handle is None:
                return
            if handle.cancelled:
                handle._finish("cancelled")
                continue
            self._active = {0: handle}
            try:
                self._run_one(handle)
            finally:
                self._active = {}

    def _batched_loop(self, batch: int) -> None:
        """Continuous batching: admit, step every active sequence once, hand out tokens."""
        engine, runner = self.llm.engine, self.llm.runner
        decodings: dict[int, Decoding] = {}
        entries: dict[int, tuple[Ticket, GenerationRequest]] = {}  # journal, by slot
        free = list(range(batch))
        stopping = False
        while True:
            while free and not stopping:  # admit (block only when nothing runs)
                try:
                    handle = self._queue.get(block=not decodings)
                except queue.Empty:
                    break
                if handle is None:
                    stopping = True
                    break
                if handle.cancelled:
                    handle._finish("cancelled")
                    continue
                spec = handle.spec
                params = SamplingParams(spec.temperature, spec.top_k, spec.top_p, spec.seed)
                request = self._request(spec)
                try:
                    decoding = engine.decoding(list(spec.prompt_ids), spec.max_new_tokens,
                                               params, spec.stop)
                    ticket = self.llm.open_entry(request, spec.key)
                except (GenerationError, JournalError, DuplicateRequestError) as error:
                    handle._finish(None, error)
                    continue
                # its events count from submission, so time to first token includes
                # the wait in the queue, as the caller sees it
                decoding.t0 -= time.monotonic() - handle.submitted
                slot = free.pop(0)
                self._active[slot] = handle
                decodings[slot] = decoding
                entries[slot] = (ticket, request)
            for slot in [s for s, h in self._active.items() if h.cancelled]:
                self._close(slot, entries, CANCELLED)
                self._active[slot]._finish("cancelled")
                self._free(slot, decodings, free)
            if not decodings:
                if stopping:
                    return
                continue
            slots = list(decodings)
            items = [BatchItem(s, tuple(decodings[s].feed), decodings[s].start) for s in slots]
            try:
                # sampled where the logits are (the hub): one token per sequence comes
                # back, not a vocabulary row
                tokens = runner.forward_sampled(items, [decodings[s].draw() for s in slots])
            except ClusterUnavailableError as error:  # the fallback chain finishes them
                for slot in slots:
                    self._serve_elsewhere(self._active[slot], decodings[slot], str(error),
                                          *entries[slot])
                    self._free(slot, decodings, free)
                continue
            except Exception as error:  # every sequence of the step gets it; go on serving
                log.warning("a batched step of %d sequence(s) failed: %s", len(slots), error)
                for slot in slots:
                    if isinstance(error, GenerationError):  # final: bad input
                        self._close(slot, entries, error)
                    self._active[slot]._finish(None, error)
                    self._free(slot, decodings, free)
                continue
            for token, slot in zip(tokens, slots, strict=True):
                decoding = decodings[slot]
                self._active[slot]._emit(decoding.take(token))
                if decoding.finished:
                    self._close(slot, entries)
                    self._active[slot]._finish(decoding.finish_reason)
                    self._free(slot, decodings, free)

    def _request(self, spec: GenerationRequestSpec) -> GenerationRequest:
        """The spec as the journal and the fallback targets take it (with its text)."""
        tokenizer = self.llm.engine.tokenizer
        text = tokenizer.decode(list(spec.prompt_ids)) if tokenizer is not None else None
        return GenerationRequest(spec.prompt_ids, text, spec.max_new_tokens,
                                 spec.temperature, spec.top_k, spec.top_p, spec.seed,
                                 spec.stop)

    def _close(self, slot: int, entries: dict[int, tuple[Ticket, GenerationRequest]],
               error: BaseException | None = None) -> None:
        """End the journal entry of `slot` (delivered, or failed with `error`)."""
        ticket, request = entries.pop(slot)
        self.llm.close_entry(ticket, request, self._active[slot]._produced, error)

    def _serve_elsewhere(self, handle: GenerationHandle, decoding: Decoding, why: str,
                         ticket: Ticket, request: GenerationRequest) -> None:
        """The cluster went away mid-batch: finish `handle` on the deployment's fallback
        chain, from its prompt plus the tokens it already handed out. If no target can,
        its journal entry stays unfinished for `Cluster.resume()`."""
        try:
            for event in self.llm.continue_elsewhere(request, handle._produced, why,
                                                     decoding.t0, ticket):
                handle._emit(event)
                if handle.cancelled:
                    self.llm.close_entry(ticket, request, handle._produced, CANCELLED)
                    handle._finish("cancelled")
                    return
        except Exception as error:  # its reader gets it (503 over HTTP)
            handle._finish(None, error)
            return
        self.llm.close_entry(ticket, request, handle._produced)
        spec, done = handle.spec, len(handle._produced)
        stopped = done < spec.max_new_tokens or self._stopped(handle._produced, spec)
        handle._finish("stop" if stopped else "length")

    def _free(self, slot: int, decodings: dict[int, Decoding], free: list[int]) -> None:
        self._active.pop(slot, None)
        decodings.pop(slot, None)
        self.llm.runner.release(slot)
        free.append(slot)

    def _run_one(self, handle: GenerationHandle) -> None:
        spec = handle.spec
        stream = self.llm.generate(list(spec.prompt_ids), spec.max_new_tokens,
                                   temperature=spec.temperature, top_k=spec.top_k,
                                   top_p=spec.top_p, seed=spec.seed,
                                   stop=None if spec.stop is None else list(spec.stop),
                                   stream=True, key=spec.key)
        assert not isinstance(stream, Generation)
        queued = time.monotonic() - handle.submitted  # seconds count from submission
        produced = 0
        try:
            for event in stream:
                handle._emit(replace(event, seconds=event.seconds + queued))
                produced += 1
                if handle.cancelled:
                    stream.close()  # type: ignore[attr-defined]
                    handle._finish("cancelled")
                    return
        except Exception as error:  # the handle's reader gets it; the scheduler goes on
            log.warning("generation %s failed: %s", handle.id, error)
            handle._finish(None, error)
            return
        stopped = produced < spec.max_new_tokens or self._stopped(handle._produced, spec)
        handle._finish("stop" if stopped else "length")

    def _stopped(self, events: list[TokenEvent], spec: GenerationRequestSpec) -> bool:
        """Whether the generation ended by a stop rule (not by length)."""
        if not events:
            return False
        stops = (set(self.llm.config.eos_token_ids) if spec.stop is None
                 else {s for s in spec.stop if isinstance(s, int)})
        if events[-1].token_id in stops:
            return True
        texts = [s for s in (spec.stop or ()) if isinstance(s, str)]
        text = "".join(e.text for e in events)
        return any(t in text for t in texts)


__all__ = ["DEFAULT_MAX_QUEUE", "GenerationScheduler"]
