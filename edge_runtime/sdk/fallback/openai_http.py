"""`OpenAICompatible`: an LLM fallback that streams from an OpenAI-compatible HTTP server.

Why: most LLM servers an app can reach when its cluster is away (a cloud API, vLLM,
llama.cpp, `transformers serve`, `edge-runtime serve` on another LAN) speak this API,
so one client covers them. Stdlib HTTP only (`http.client`): the SDK gains no
dependency for a path that may never be taken.

It speaks text: the prompt goes as the request's text (an endpoint has its own
tokenizer), stop token ids are dropped (stop strings are sent), and every streamed
delta becomes a `TokenEvent` with `token_id=-1`. `top_k` has no field in this API and
is not sent. Every failure (refused connection, a timeout, an HTTP error with the
server's own message, a stream cut short) is a `FallbackError` naming the target.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import time
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit

from edge_runtime.errors import ConfigError, FallbackError
from edge_runtime.llm.engine import TokenEvent
from edge_runtime.sdk.fallback.targets import GenerationRequest

log = logging.getLogger(__name__)

# The most of an error body read to find the server's message in it.
_ERROR_BODY_BYTES = 64 * 1024
# The most of the server's message quoted in a FallbackError.
_MESSAGE_CHARS = 500
DONE = "[DONE]"


def sse_data(lines: Iterable[bytes]) -> Iterator[str]:
    """The `data` of each server-sent event in `lines` (multi-line data joined by "\\n",
    comments and other fields skipped), per the HTML SSE rules."""
    data: list[str] = []
    for raw in lines:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if field == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)


def error_message(body: bytes) -> str:
    """The server's message in an error body: OpenAI's `{"error": {"message": ...}}`,
    `{"error": "..."}`, FastAPI's `{"detail": ...}`, or the text itself."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        doc = json.loads(text)
    except ValueError:
        return text[:_MESSAGE_CHARS] or "(empty body)"
    if isinstance(doc, dict):
        err = doc.get("error", doc.get("detail"))
        if isinstance(err, dict) and "message" in err:
            return str(err["message"])[:_MESSAGE_CHARS]
        if err is not None:
            return (err if isinstance(err, str) else json.dumps(err))[:_MESSAGE_CHARS]
    return text[:_MESSAGE_CHARS]


class OpenAICompatible:
    """A model behind `{base_url}/completions` (or `/chat/completions` with `chat=True`,
    the prompt as one user message), e.g. `OpenAICompatible("https://host/v1", "m")`.

    `timeout_s` is the longest wait for any one answer from the server (the connection,
    the first byte, the next delta); `stream`'s own `timeout_s` bounds the whole
    generation. `api_key` is sent as a bearer token. `cloud=False` for a server on this
    device or LAN (a policy that forbids the cloud may then use it)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        chat: bool = False,
        cloud: bool = True,
        degraded: bool = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"OpenAI-compatible base_url {base_url!r} is not an http(s) URL: give e.g. "
                "'http://127.0.0.1:8000/v1'"
            )
        if parts.query or parts.fragment:
            raise ConfigError(f"base_url {base_url!r}: drop the query or fragment")
        if not timeout_s > 0:
            raise ConfigError(f"timeout_s must be positive, got {timeout_s!r}")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        endpoint = "/chat/completions" if chat else "/completions"
        self.path = parts.path + endpoint
        self.url = self.base_url + endpoint
        self.model = model
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.chat = chat
        self._cloud = cloud
        self._degraded = degraded
        self._name = f"openai:{model}@{self.base_url}"

    @property
    def name(self) -> str:
        return self._name

    @property
    def cloud(self) -> bool:
        return self._cloud

    @property
    def degraded(self) -> bool:
        return self._degraded

    def _fail(self, message: str) -> FallbackError:
        return FallbackError(message, target=self._name)

    def body(self, request: GenerationRequest) -> dict[str, Any]:
        """The JSON request of one streamed generation."""
        if request.prompt_text is None:
            raise self._fail(
                "an HTTP endpoint needs the prompt as text, and this request has only token "
                "ids: give the prompt as text (or deploy a checkpoint with a tokenizer.json)"
            )
        body: dict[str, Any] = {"model": self.model}
        if self.chat:
            body["messages"] = [{"role": "user", "content": request.prompt_text}]
        else:
            body["prompt"] = request.prompt_text
        body.update(
            max_tokens=request.max_new_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            stream=True,
        )
        if request.seed is not None:
            body["seed"] = request.seed
        stops = [s for s in request.stop or () if isinstance(s, str)]
        if stops:
            body["stop"] = stops
        return body

    def stream(self, request: GenerationRequest, timeout_s: float) -> Iterator[TokenEvent]:
        """Send the request and return its deltas; a refused connection, an HTTP error or
        a timeout before the first byte raises `FallbackError` at the call."""
        t0 = time.perf_counter()
        deadline = time.monotonic() + timeout_s
        payload = json.dumps(self.body(request)).encode()
        headers = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            "User-Agent": "edge-runtime",
        }
        if self.api_key is not None:
            headers["Authorization"] = f"Bearer {self.api_key}"
        wait = self._wait(deadline)
        conn: http.client.HTTPConnection = (
            http.client.HTTPSConnection(self._host, self._port, timeout=wait) if self._https
            else http.client.HTTPConnection(self._host, self._port, timeout=wait)
        )
        try:
            conn.request("POST", self.path, body=payload, headers=headers)
            response = conn.getresponse()
            if response.status != 200:
                message = error_message(response.read(_ERROR_BODY_BYTES))
                raise self._fail(f"HTTP {response.status} from {self.url}: {message}")
            kind = response.getheader("Content-Type", "").split(";")[0].strip().lower()
        except FallbackError:
            conn.close()
            raise
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise self._network_error(exc, timeout_s) from exc
        if kind == "application/json":  # a server that ignores `stream`: one whole answer
            return self._whole(conn, response, t0, timeout_s)
        if kind != "text/event-stream":
            conn.close()
            raise self._fail(
                f"{self.url} answered {kind or 'no content type'}, not an event stream: is "
                "it an OpenAI-compatible endpoint? (base_url usually ends in /v1)"
            )
        return self._events(conn, response, t0, deadline, timeout_s)

    def _wait(self, deadline: float) -> float:
        """How long the next socket operation may block."""
        return max(0.001, min(self.timeout_s, deadline - time.monotonic()))

    def _network_error(self, exc: BaseException, timeout_s: float) -> FallbackError:
        if isinstance(exc, TimeoutError | socket.timeout):
            return self._fail(
                f"{self.url} did not answer within "
                f"{min(self.timeout_s, timeout_s):.1f} s: the server is overloaded or "
                "unreachable; allow a longer timeout_s"
            )
        if isinstance(exc, ConnectionRefusedError):
            return self._fail(f"connection to {self.url} refused: is the server running?")
        return self._fail(f"{self.url}: {type(exc).__name__}: {exc}")

    def _delta(self, chunk: dict[str, Any]) -> tuple[str, bool]:
        """The text of one chunk and whether it carries a finish reason."""
        choices = chunk.get("choices") or []
        if not choices or not isinstance(choices[0], dict):
            return "", False
        choice = choices[0]
        if self.chat:
            delta = choice.get("delta") or choice.get("message") or {}
            text = delta.get("content") if isinstance(delta, dict) else None
        else:
            text = choice.get("text")
        return (text if isinstance(text, str) else ""), choice.get("finish_reason") is not None

    def _events(
        self,
        conn: http.client.HTTPConnection,
        response: http.client.HTTPResponse,
        t0: float,
        deadline: float,
        timeout_s: float,
    ) -> Iterator[TokenEvent]:
        index = 0
        finished = False

        def lines() -> Iterator[bytes]:
            while True:
                if conn.sock is not None:
                    conn.sock.settimeout(self._wait(deadline))
                line = response.readline()
                if not line:
                    return
                yield line

        try:
            for data in sse_data(lines()):
                if data.strip() == DONE:
                    return
                try:
                    chunk = json.loads(data)
                except ValueError as exc:
                    raise self._fail(f"{self.url} sent an event that is not JSON: "
                                     f"{data[:200]!r}") from exc
                if not isinstance(chunk, dict):
                    raise self._fail(f"{self.url} sent an event that is not a JSON object")
                if "error" in chunk:
                    raise self._fail(f"{self.url} failed mid-stream: "
                                     f"{error_message(data.encode())}")
                text, done = self._delta(chunk)
                finished = finished or done
                if text:
                    if time.monotonic() > deadline:
                        raise self._fail(f"the generation did not finish within "
                                         f"{timeout_s:.1f} s ({index} deltas yielded)")
                    yield TokenEvent(index, -1, text, time.perf_counter() - t0)
                    index += 1
            if not finished:
                raise self._fail(f"the stream from {self.url} ended before the answer did "
                                 "(no finish reason, no [DONE]): the server or a proxy cut it")
        except (OSError, http.client.HTTPException) as exc:
            raise self._network_error(exc, timeout_s) from exc
        except UnicodeDecodeError as exc:
            raise self._fail(f"{self.url} sent an event that is not UTF-8") from exc
        finally:
            conn.close()

    def _whole(
        self,
        conn: http.client.HTTPConnection,
        response: http.client.HTTPResponse,
        t0: float,
        timeout_s: float,
    ) -> Iterator[TokenEvent]:
        try:
            try:
                doc = json.loads(response.read())
            except (OSError, http.client.HTTPException) as exc:
                raise self._network_error(exc, timeout_s) from exc
            except ValueError as exc:
                raise self._fail(f"{self.url} answered JSON that does not parse") from exc
            if not isinstance(doc, dict):
                raise self._fail(f"{self.url} answered JSON that is not an object")
            text, _ = self._delta(doc)
            if text:
                yield TokenEvent(0, -1, text, time.perf_counter() - t0)
        finally:
            conn.close()

    def close(self) -> None:
        """Nothing to release: each generation opens and closes its own connection."""


__all__ = ["OpenAICompatible", "error_message", "sse_data"]
