"""The OpenAI-compatible HTTP API in front of one `GenerationScheduler` (Starlette).

    GET  /v1/models            the one served model
    POST /v1/completions       prompt text or token ids -> text
    POST /v1/chat/completions  messages, laid out by the checkpoint's chat template

Why it never touches the cluster: the coordinator's sockets belong to the scheduler's
thread. A request is checked (`schemas`), encoded and measured against the context,
then `scheduler.submit`ted; its tokens come back through the handle, whose blocking
`next_event` is awaited in a worker thread with a short timeout, so a waiting request
still notices its client leaving (`request.is_disconnected()`). A client that goes away
— its stream closed or cancelled, or found disconnected while waiting — cancels its
handle, which stops the generation before its next token and frees its place.

The first token is awaited before the answer's status is sent, so a request that fails
before producing anything gets the right status (503 with the cluster away); a failure
after that ends the stream with an OpenAI error event. Errors map to statuses as OpenAI
clients expect: 400 bad parameters, malformed JSON or a prompt past the context (code
`context_length_exceeded`), 401 without the API key, 404 for another model's name,
413 for a body over `MAX_BODY_BYTES`, 429 when the queue is full, 503 when the cluster
is unavailable or the server is shutting down.
"""

from __future__ import annotations

import hmac
import logging
import queue
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from edge_runtime.dashboard.wiring import observe_server
from edge_runtime.errors import (
    USER_ERRORS,
    AgentUnavailableError,
    ConfigError,
    ContextLengthError,
    GenerationError,
    QueueFullError,
    is_user_error,
)
from edge_runtime.llm.engine import TokenEvent
from edge_runtime.metrics.serve_stats import ServeStats
from edge_runtime.serve import schemas as s
from edge_runtime.serve.served import Inflight, ServedModel

if TYPE_CHECKING:
    from edge_runtime.metrics.monitor import ClusterMonitor
    from edge_runtime.sdk.handles import GenerationHandle
    from edge_runtime.sdk.scheduler import GenerationScheduler

log = logging.getLogger(__name__)

# OpenAI's default `max_tokens` for /v1/completions (chat defaults to the rest of the context).
DEFAULT_COMPLETION_TOKENS = 16
# How often a request waiting for its next token checks whether its client left.
POLL_S = 0.25
# Request bodies above this are refused (413): a prompt is bounded by the context anyway.
MAX_BODY_BYTES = 4 * 2**20
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def api_error(error: BaseException) -> s.ApiError:
    """The OpenAI-shaped answer for an error raised while serving a request."""
    if isinstance(error, s.ApiError):
        return error
    message = str(error)
    if isinstance(error, QueueFullError):
        return s.ApiError(429, message, type="rate_limit_error", code="queue_full")
    if isinstance(error, AgentUnavailableError):
        return s.ApiError(503, message, type="server_error", code="cluster_unavailable")
    if isinstance(error, GenerationError):
        return s.bad(message)
    if isinstance(error, ConfigError):  # the scheduler closed: shutting down
        return s.ApiError(503, message, type="server_error", code="shutting_down")
    if is_user_error(error):
        return s.ApiError(500, message, type="server_error")
    log.error("unexpected error while serving", exc_info=error)
    return s.ApiError(500, "internal server error (see the server's log)", type="server_error")


def _error_response(error: s.ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


class _Stream(StreamingResponse):
    """A streamed answer that runs `on_close` however it ends: finished, the client
    gone (Starlette cancels the body), or the server shutting down."""

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream", headers=SSE_HEADERS)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


@dataclass(frozen=True)
class _Job:
    """An admitted request: its handle and how to shape its answer."""

    rid: str
    handle: GenerationHandle
    chat: bool
    sampling: s.Sampling
    model: str
    created: int

    def chunk(self, text: str | None, finish: str | None, *, role: bool = False) -> dict[str, Any]:
        if not self.chat:
            return s.completion_chunk(self.rid, self.created, self.model, text or "", finish)
        delta = {"role": "assistant", "content": ""} if role else (
            {} if text is None else {"content": text})
        chunk = s.chat_chunk(self.rid, self.created, self.model, delta, finish)
        return {**chunk, "usage": None} if self.sampling.include_usage else chunk

    def body(self, text: str, finish: str | None, counts: dict[str, int]) -> dict[str, Any]:
        build = s.chat_body if self.chat else s.completion_body
        return build(self.rid, self.created, self.model, text, finish, counts)


class _Api:
    def __init__(self, scheduler: GenerationScheduler, model: ServedModel,
                 api_key: str | None, inflight: Inflight) -> None:
        self.scheduler = scheduler
        self.model = model
        self._key = None if api_key is None else api_key.encode()
        self.inflight = inflight
        self.stats = ServeStats()  # replaced by `observe_server`'s, read by /metrics
        self._limiter: anyio.CapacityLimiter | None = None
        self._boot = uuid.uuid4().hex[:8]

    # --- the endpoints ---

    async def models(self, request: Request) -> Response:
        self._authorize(request)
        return JSONResponse(s.models_body(self.model.name, self.model.created))

    async def completions(self, request: Request) -> Response:
        self._authorize(request)
        req = s.parse_completion(s.parse_body(await _body(request)))
        self._check_model(req.model)
        return await self._serve(request, req.prompt, req.sampling, chat=False)

    async def chat(self, request: Request) -> Response:
        self._authorize(request)
        req = s.parse_chat(s.parse_body(await _body(request)))
        self._check_model(req.model)
        if self.model.tokenizer is None:
            raise s.bad("this checkpoint has no tokenizer.json, so chat is not available: "
                        "use /v1/completions with token ids", "messages")
        rendered = await self._thread(self.model.chat_template.render,
                                      [m.template_input() for m in req.messages])
        return await self._serve(request, rendered, req.sampling, chat=True)

    # --- checks ---

    def _authorize(self, request: Request) -> None:
        if self._key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise s.ApiError(401, "no API key given: send the header "
                             "'Authorization: Bearer <key>'", code="invalid_api_key")
        if not hmac.compare_digest(given.strip().encode(), self._key):
            raise s.ApiError(401, "incorrect API key provided", code="invalid_api_key")

    def _check_model(self, name: str) -> None:
        if name != self.model.name:
            raise s.ApiError(404, f"the model {name!r} does not exist: this server serves "
                             f"{self.model.name!r}", param="model", code="model_not_found")

    # --- generation ---

    async def _thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._limiter is None:  # one worker per waiting request, beyond anyio's 40
            self._limiter = anyio.CapacityLimiter(self.scheduler.max_queue + 16)
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    def _submit(self, prompt: str | Sequence[int], sampling: s.Sampling,
                chat: bool) -> GenerationHandle:
        """Encode, check against the context, queue (a worker thread: it tokenizes)."""
        tokenizer, limit = self.model.tokenizer, self.model.max_context
        where = "messages" if chat else "prompt"
        if isinstance(prompt, str):
            if tokenizer is None:
                raise s.bad("this checkpoint has no tokenizer.json: send 'prompt' as a list "
                            "of token ids", "prompt")
            # a rendered chat already holds its special tokens, as transformers encodes it
            ids = tokenizer.encode(prompt, add_special_tokens=not chat)
        else:
            ids = list(prompt)
        if sampling.stop and tokenizer is None:
            raise s.bad("'stop' needs a tokenizer.json, which this checkpoint lacks", "stop")
        # chat without max_tokens: the rest of the context, at least one token
        wanted = sampling.max_tokens or (max(limit - len(ids), 1) if chat
                                         else DEFAULT_COMPLETION_TOKENS)
        try:
            return self.scheduler.submit(
                ids, wanted, temperature=sampling.temperature, top_k=sampling.top_k,
                top_p=sampling.top_p, seed=sampling.seed,
                stop=[*self.model.eos_token_ids, *sampling.stop])
        except ContextLengthError as error:
            raise s.bad(f"this model's maximum context length is {error.max_context} tokens, "
                        f"but the request asks for {error.prompt_tokens + error.new_tokens} "
                        f"({error.prompt_tokens} in the {where}, {error.new_tokens} for the "
                        f"completion): shorten the {where} or lower max_tokens", where,
                        "context_length_exceeded") from error

    async def _next(self, handle: GenerationHandle, request: Request) -> TokenEvent | None:
        """The handle's next token, None at its end (or once its client has left, which
        cancels it); raises the generation's error."""
        while True:
            if await request.is_disconnected():
                handle.cancel()
                return None
            try:
                event: TokenEvent | None = await self._thread(handle.next_event, POLL_S)
                if event is not None:
                    self.stats.token(handle.id, event.seconds, event.served_by)
                return event
            except queue.Empty:
                continue

    async def _serve(self, request: Request, prompt: str | Sequence[int],
                     sampling: s.Sampling, *, chat: bool) -> Response:
        handle: GenerationHandle = await self._thread(self._submit, prompt, sampling, chat)
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{self._boot}-{handle.id}"
        self.inflight.add(rid, handle)
        self.stats.started(handle.id, rid, "chat" if chat else "completions",
                           handle.prompt_tokens)
        job = _Job(rid, handle, chat, sampling, self.model.name, int(time.time()))

        def close() -> None:
            if not handle.done():
                handle.cancel()
            self.inflight.end(rid)
            error = getattr(handle, "error", None)
            self.stats.ended(handle.id, getattr(handle, "finish_reason", None),
                             None if error is None else type(error).__name__)

        try:
            first = await self._next(handle, request)  # errors before any token: a status
        except BaseException:
            close()
            raise
        if sampling.stream:
            return _Stream(self._events(job, first, request), close)
        try:
            return await self._whole(job, first, request)
        finally:
            close()

    async def _whole(self, job: _Job, first: TokenEvent | None,
                     request: Request) -> Response:
        stop = s.StopText(job.sampling.stop)
        parts, produced, event = [], 0, first
        while event is not None:
            produced += 1
            parts.append(stop.push(event.text))
            event = await self._next(job.handle, request)
        parts.append(stop.flush())
        counts = s.usage(job.handle.prompt_tokens, produced)
        return JSONResponse(job.body("".join(parts), _finish(job.handle, stop), counts))

    async def _events(self, job: _Job, first: TokenEvent | None,
                      request: Request) -> AsyncIterator[bytes]:
        stop = s.StopText(job.sampling.stop)
        produced, event = 0, first
        try:
            if job.chat:
                yield s.sse(job.chunk(None, None, role=True))
            while event is not None:
                produced += 1
                text = stop.push(event.text)
                if text:
                    yield s.sse(job.chunk(text, None))
                event = await self._next(job.handle, request)
            tail = stop.flush()
            if tail:
                yield s.sse(job.chunk(tail, None))
            last = job.chunk(None, _finish(job.handle, stop))
            yield s.sse(last)
            if job.sampling.include_usage:
                counts = s.usage(job.handle.prompt_tokens, produced)
                yield s.sse(s.usage_chunk(last, counts))
        except Exception as error:  # after the status was sent: an error event ends it
            yield s.sse(api_error(error).body())
        yield s.sse("[DONE]")


def _finish(handle: GenerationHandle, stop: s.StopText) -> str | None:
    """OpenAI's finish_reason: "stop" (EOS or a stop sequence), "length", or the
    scheduler's "cancelled" when the server cancelled it (shutting down)."""
    return "stop" if stop.stopped else handle.finish_reason


async def _body(request: Request) -> bytes:
    size = int(request.headers.get("content-length") or 0)
    if size > MAX_BODY_BYTES:
        raise s.ApiError(413, f"the request body is {size} bytes; the limit is "
                         f"{MAX_BODY_BYTES}", code="request_too_large")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > MAX_BODY_BYTES:
            raise s.ApiError(413, f"the request body is over the limit of {MAX_BODY_BYTES} "
                             "bytes", code="request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


async def _on_api_error(request: Request, error: Exception) -> Response:
    answer = api_error(error)
    request.app.state.serve_stats.error(type(error).__name__, answer.status)
    return _error_response(answer)


async def _on_http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    message = {404: f"no route {request.url.path}: see /v1/models, /v1/completions, "
                    "/v1/chat/completions",
               405: f"{request.method} is not allowed on {request.url.path}"}.get(
        error.status_code, str(error.detail))
    return _error_response(s.ApiError(error.status_code, message))


def create_app(scheduler: GenerationScheduler, model: ServedModel, *,
               api_key: str | None = None, monitor: ClusterMonitor | None = None
               ) -> Starlette:
    """The ASGI app serving `scheduler`'s deployment as `model.name`; with `api_key`,
    every request must carry `Authorization: Bearer <api_key>`. `app.state.inflight`
    is the `Inflight` registry of the generations being answered. `/metrics` is served
    always; with a `monitor` of the agents, also the dashboard (/dashboard) and the
    agents' own series (`edge_runtime.dashboard.observe_server`)."""
    inflight = Inflight()
    api = _Api(scheduler, model, api_key or None, inflight)
    app = Starlette(
        routes=[Route("/v1/models", api.models, methods=["GET"]),
                Route("/v1/completions", api.completions, methods=["POST"]),
                Route("/v1/chat/completions", api.chat, methods=["POST"])],
        exception_handlers={s.ApiError: _on_api_error, HTTPException: _on_http_error,
                            # typed errors answer as themselves; anything else is a
                            # 500 whose traceback uvicorn logs
                            **dict.fromkeys(USER_ERRORS, _on_api_error),
                            Exception: _on_api_error})
    app.state.inflight = inflight
    app.state.model = model
    api.stats = observe_server(
        app, api._authorize, model=model.name, queued=lambda: scheduler.queued,
        running=lambda: scheduler.running, slots=getattr(scheduler.llm, "max_batch", 1),
        monitor=monitor,
        chat=model.tokenizer is not None, plan_text=_describe(scheduler)).stats
    return app


def _describe(scheduler: GenerationScheduler) -> str | None:
    describe = getattr(scheduler.llm, "describe", None)
    return describe() if callable(describe) else None


__all__ = ["DEFAULT_COMPLETION_TOKENS", "Inflight", "ServedModel", "api_error", "create_app"]
