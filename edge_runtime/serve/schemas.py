"""The OpenAI request bodies as typed records, and the JSON the server answers with.

Why one module: every request is checked here, before anything is queued, so a bad
parameter is a 400 that names it (`ApiError`, in OpenAI's `{"error": {...}}` shape)
and the rest of the server only ever sees well-formed `CompletionRequest` /
`ChatRequest` values. The response builders keep the exact field layout the OpenAI
clients parse (`text_completion`, `chat.completion`, `chat.completion.chunk`, usage,
server-sent events ending in `data: [DONE]`) in one place.

Defaults are OpenAI's: temperature 1, top_p 1, `max_tokens` 16 for completions and
the rest of the context for chat (decided by the app, which knows the context). Fields
this server does not implement are refused when set to anything but their neutral
value (`n` > 1, `logprobs`, `echo`, penalties, tools...), never silently ignored;
fields it does not know are ignored, as most OpenAI-compatible servers do.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# OpenAI's bounds.
MAX_TEMPERATURE = 2.0
MAX_STOP_SEQUENCES = 4
ROLES = ("system", "developer", "user", "assistant", "tool")

# Fields this server refuses unless they hold their neutral value (shown in the message).
_UNSUPPORTED: dict[str, tuple[object, ...]] = {
    "logprobs": (None, False, 0),
    "top_logprobs": (None, 0),
    "echo": (None, False),
    "best_of": (None, 1),
    "suffix": (None, ""),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "tools": (None, []),
    "functions": (None, []),
    "tool_choice": (None, "none"),
    "function_call": (None, "none"),
}


class ApiError(Exception):
    """An answer in OpenAI's error shape: HTTP `status` and the `error` object."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


def bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    """A 400 for a request parameter."""
    return ApiError(400, message, param=param, code=code)


@dataclass(frozen=True)
class Sampling:
    """How to generate, common to both endpoints."""

    max_tokens: int | None = None  # None: the endpoint's default
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # an extension (vLLM's name); 0 = off
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage


@dataclass(frozen=True)
class CompletionRequest:
    model: str
    prompt: str | tuple[int, ...]
    sampling: Sampling


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str | None  # None: an assistant turn without text
    name: str | None = None

    def template_input(self) -> dict[str, Any]:
        """The dict a chat template sees (None fields left out)."""
        out: dict[str, Any] = {"role": self.role}
        if self.content is not None:
            out["content"] = self.content
        if self.name is not None:
            out["name"] = self.name
        return out


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: tuple[ChatMessage, ...]
    sampling: Sampling


# --- parsing ---

def parse_body(raw: bytes) -> dict[str, Any]:
    """The JSON object of a request body (400 for anything else)."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise bad(f"the request body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise bad(f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def _string(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise bad(f"'{name}' is required and must be a non-empty string", name)
    return value


def _number(body: Mapping[str, Any], name: str, default: float, low: float, high: float,
            *, low_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    within = _is_number(value) and (low < value if low_open else low <= value) and value <= high
    if not within:
        bracket = "(" if low_open else "["
        raise bad(f"'{name}' must be a number in {bracket}{low:g}, {high:g}], got {value!r}",
                  name)
    return float(value)


def _integer(body: Mapping[str, Any], name: str, low: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not _is_int(value) or value < low:
        raise bad(f"'{name}' must be an integer >= {low}, got {value!r}", name)
    return int(value)


def _flag(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad(f"'{name}' must be true or false, got {value!r}", name)
    return value


def _stop(body: Mapping[str, Any]) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if (not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops)
            or len(stops) > MAX_STOP_SEQUENCES):
        raise bad(f"'stop' must be a non-empty string or a list of at most "
                  f"{MAX_STOP_SEQUENCES} non-empty strings, got {value!r}", "stop")
    return tuple(dict.fromkeys(stops))


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise bad(f"'n' must be 1: this server returns one choice per request, got {n!r}",
                  "n")
    for name, neutral in _UNSUPPORTED.items():
        if body.get(name) not in neutral:
            raise bad(f"'{name}' is not supported by this server; leave it out", name)
    fmt = body.get("response_format")
    if fmt is not None and fmt != {"type": "text"}:
        raise bad("'response_format' other than {\"type\": \"text\"} is not supported by "
                  "this server", "response_format")


def _sampling(body: Mapping[str, Any], *, chat: bool) -> Sampling:
    _refuse_unsupported(body)
    names = ("max_completion_tokens", "max_tokens") if chat else ("max_tokens",)
    max_tokens = None
    for name in names:
        max_tokens = _integer(body, name, 1)
        if max_tokens is not None:
            break
    top_k = _integer(body, "top_k", -1)
    seed = _integer(body, "seed", 0)
    stream = _flag(body, "stream")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise bad("'stream_options' is only allowed when 'stream' is true",
                      "stream_options")
        if not isinstance(options, dict):
            raise bad(f"'stream_options' must be an object, got {options!r}", "stream_options")
        include_usage = _flag(options, "include_usage")
    top_p = body.get("top_p")
    if top_p == 0 and _is_number(top_p):
        raise bad("'top_p' must be in (0, 1]; for greedy decoding set 'temperature' to 0",
                  "top_p")
    return Sampling(
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, MAX_TEMPERATURE),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        top_k=0 if top_k in (None, -1) else int(top_k),  # -1: vLLM's "off"
        seed=seed, stop=_stop(body), stream=stream, include_usage=include_usage)


def _prompt(value: object) -> str | tuple[int, ...]:
    """A string, or token ids; a list holding one of those is that prompt."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str | list):
        value = value[0]
    if isinstance(value, str):
        if not value:
            raise bad("'prompt' is empty: give at least one character or token id", "prompt")
        return value
    if isinstance(value, list) and value and all(_is_int(t) for t in value):
        return tuple(int(t) for t in value)
    if isinstance(value, list) and value and all(isinstance(p, str | list) for p in value):
        raise bad(f"'prompt' holds {len(value)} prompts; this server takes one per request",
                  "prompt")
    raise bad("'prompt' must be a non-empty string or a non-empty list of token ids",
              "prompt")


def parse_completion(body: Mapping[str, Any]) -> CompletionRequest:
    """A `POST /v1/completions` body."""
    model = _string(body, "model")
    if "prompt" not in body:
        raise bad("'prompt' is required", "prompt")
    return CompletionRequest(model, _prompt(body["prompt"]), _sampling(body, chat=False))


def _content(value: object, where: str) -> str | None:
    """A message's content: a string, text parts (joined by newlines), or null."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for part in value:
            if not isinstance(part, dict) or part.get("type") != "text" \
                    or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise bad(f"{where}.content: only text parts are supported, got {kind!r}",
                          "messages")
            texts.append(part["text"])
        return "\n".join(texts)
    raise bad(f"{where}.content must be a string, a list of text parts or null", "messages")


def _message(value: object, index: int) -> ChatMessage:
    where = f"messages[{index}]"
    if not isinstance(value, dict):
        raise bad(f"{where} must be an object with 'role' and 'content'", "messages")
    role = value.get("role")
    if role not in ROLES:
        raise bad(f"{where}.role must be one of {', '.join(ROLES)}; got {role!r}", "messages")
    content = _content(value.get("content"), where)
    if content is None and role != "assistant":
        raise bad(f"{where}.content is required for role {role!r}", "messages")
    name = value.get("name")
    if name is not None and not isinstance(name, str):
        raise bad(f"{where}.name must be a string", "messages")
    return ChatMessage(str(role), content, name)


def parse_chat(body: Mapping[str, Any]) -> ChatRequest:
    """A `POST /v1/chat/completions` body."""
    model = _string(body, "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("'messages' is required and must be a non-empty list", "messages")
    parsed = tuple(_message(m, i) for i, m in enumerate(messages))
    return ChatRequest(model, parsed, _sampling(body, chat=True))


# --- what the server answers ---

def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def models_body(name: str, created: int) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": name, "object": "model", "created": created,
                                        "owned_by": "edge-runtime"}]}


def completion_body(rid: str, created: int, model: str, text: str, finish_reason: str | None,
                    counts: dict[str, int]) -> dict[str, Any]:
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None,
                         "finish_reason": finish_reason}],
            "usage": counts}


def completion_chunk(rid: str, created: int, model: str, text: str,
                     finish_reason: str | None) -> dict[str, Any]:
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None,
                         "finish_reason": finish_reason}]}


def chat_body(rid: str, created: int, model: str, text: str, finish_reason: str | None,
              counts: dict[str, int]) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": None, "finish_reason": finish_reason}],
            "usage": counts}


def chat_chunk(rid: str, created: int, model: str, delta: dict[str, str],
               finish_reason: str | None) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None,
                         "finish_reason": finish_reason}]}


def usage_chunk(chunk: dict[str, Any], counts: dict[str, int]) -> dict[str, Any]:
    """The last chunk of a stream with `include_usage`: no choices, the usage."""
    return {**chunk, "choices": [], "usage": counts}


def sse(payload: Mapping[str, Any] | str) -> bytes:
    """One server-sent event: `data: <json>` (or `data: [DONE]`) and a blank line."""
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


class StopText:
    """The text a client is shown: cut before the first stop sequence, as OpenAI does.

    The engine stops at the token whose text completes a stop sequence (that text
    included); this holds back any tail that could still become one, so a streamed
    piece never shows part of a stop sequence, and drops everything from its start."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = stops
        self._held = ""
        self.stopped = False

    def push(self, piece: str) -> str:
        """The text of `piece` that can be shown now."""
        if self.stopped:
            return ""
        text = self._held + piece
        hits = [i for i in (text.find(s) for s in self._stops) if i >= 0]
        if hits:
            self.stopped = True
            self._held = ""
            return text[:min(hits)]
        hold = max((k for s in self._stops for k in range(min(len(s) - 1, len(text)), 0, -1)
                    if text.endswith(s[:k])), default=0)
        self._held = text[len(text) - hold:] if hold else ""
        return text[:len(text) - hold]

    def flush(self) -> str:
        """What was held back, at the end of a generation that did not stop on it."""
        held, self._held = self._held, ""
        return held


__all__ = ["ApiError", "ChatMessage", "ChatRequest", "CompletionRequest", "Sampling",
           "StopText", "bad", "chat_body", "chat_chunk", "completion_body",
           "completion_chunk", "models_body", "parse_body", "parse_chat", "parse_completion",
           "sse", "usage", "usage_chunk"]
