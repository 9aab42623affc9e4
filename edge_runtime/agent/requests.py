"""How the agent answers one received message: decoded once, then handled on the
control loop, or on the loads or probes lane when it is slow; answered, or answered
with a typed error frame — nothing a message holds can raise out of here.

Why apart from `daemon.py`: the daemon owns the sockets and the loop's turns; this
owns what becomes of a message between its bytes arriving and its answer being handed
back (malformed ones refused with a `ProtocolError` frame, a full lane with
`AgentBusyError`, a hop's failure answered to the coordinator the hop names).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edge_runtime.agent.config import AgentTimeouts
from edge_runtime.agent.handlers import Handlers
from edge_runtime.agent.lanes import Lane
from edge_runtime.errors import AgentBusyError, AgentUnavailableError, is_user_error
from edge_runtime.protocol import kinds as p
from transports.wire import Frame, decode, error_frame, peek_request_id

if TYPE_CHECKING:
    from edge_runtime.agent.daemon import AgentState

log = logging.getLogger(__name__)

LOG_TEXT_LIMIT = 300
"""Longest peer-supplied text (error messages, identities) written to the log: a hostile
message must not turn into a megabyte log line."""

SLOW_KINDS = frozenset({p.DEPLOY, p.UNLOAD, p.PUT_CHUNK, p.LLM_PUT})
"""Requests that take long (loading, hashing, unloading): answered from the loads lane,
in arrival order."""
PROBE_KINDS = frozenset({p.PROBE_LINK})
"""Link probes: a lane of their own with a bounded backlog."""


def clip(text: object) -> str:
    """Peer-supplied text as the log may show it (`LOG_TEXT_LIMIT`)."""
    shown = repr(text) if isinstance(text, bytes) else str(text)
    return shown if len(shown) <= LOG_TEXT_LIMIT else shown[:LOG_TEXT_LIMIT] + "…"


class Requests:
    """The agent's answering of messages; its two lanes for the slow ones."""

    def __init__(self, name: str, state: AgentState, handlers: Handlers,
                 timeouts: AgentTimeouts, send_to_client: Callable[[bytes, Frame], None],
                 reply: Callable[[bytes, Frame], None]) -> None:
        """`send_to_client`: hand an answer to the loop (any thread); `reply`: send one
        now (the loop's own thread)."""
        self._name = name
        self.state = state
        self._handlers = handlers
        self._timeouts = timeouts
        self._send_to_client = send_to_client
        self._reply = reply
        self._loads = Lane("loads", max_queued=timeouts.loads_queue)
        self._probes = Lane("probes", max_queued=timeouts.probe_queue)

    def on_message(self, parts: list[Any]) -> None:
        """Handle one message; nothing it contains can raise out of here."""
        identity = b""
        try:
            identity = bytes(parts[0].bytes if hasattr(parts[0], "bytes") else parts[0])
            self.state.wire.received(identity, sum(len(part) for part in parts[1:]))
            frame = decode(parts[1:], max_message_bytes=self._timeouts.max_message_bytes)
        except Exception as error:  # ProtocolError, or anything a decoder failed to foresee
            log.warning("malformed message from %s: %s", clip(identity), clip(error))
            request_id = peek_request_id(parts[1:])
            self.state.errors_answered += 1
            self.state.wire.error("malformed", "ProtocolError")
            self._reply(identity, error_frame(request_id, "ProtocolError", str(error)[:1000],
                                              sender=self._name))
            return
        if frame.kind in SLOW_KINDS:
            if not self._loads.submit(lambda: self.answer(identity, frame)):
                self.answer_error(identity, frame, AgentBusyError(
                    f"{self._timeouts.loads_queue} deploys and uploads are already queued; "
                    "retry later", agent=self._name))
        elif frame.kind in PROBE_KINDS:
            if not self._probes.submit(lambda: self.answer(identity, frame)):
                self.answer_error(identity, frame, AgentBusyError(
                    f"{self._timeouts.probe_queue} link probes are already queued; "
                    "retry later", agent=self._name))
        else:
            self.answer(identity, frame)

    def answer(self, identity: bytes, frame: Frame) -> None:
        """Run the handler of `frame` (on the loop or a lane) and answer its sender."""
        started = time.perf_counter()
        try:
            answer = self._handlers.dispatch(identity, frame)
        except Exception as error:  # answer with a typed error; the agent keeps serving
            if not is_user_error(error):
                log.exception("handler for %s failed", clip(frame.kind))
            self.answer_error(identity, frame, error)
            return
        self.state.requests_served += 1
        self.state.wire.request(frame.kind, None if answer is None
                                else time.perf_counter() - started)
        if answer is not None:
            self._send_to_client(identity, answer)

    def answer_error(self, identity: bytes, frame: Frame, error: BaseException) -> None:
        self.state.errors_answered += 1
        self.state.wire.error(frame.kind, type(error).__name__)
        target = identity
        # a hop from another agent (an ONNX stage's activation, an LLM stage's hidden
        # state): the coordinator waiting for it is named in the frame
        client = (frame.meta.get("client") if frame.kind in (p.ACTIVATION, p.LLM_HIDDEN)
                  else None)
        if isinstance(client, bytes) and 0 < len(client) <= 255:
            target = client
        # the agent it is about: the unreachable next hop when that is what failed (the
        # coordinator then re-plans without it, not without this agent), else this one
        about = (error.agent if isinstance(error, AgentUnavailableError) and error.agent
                 else self._name)
        self._send_to_client(target, error_frame(
            frame.request_id, type(error).__name__, str(error)[:4000], sender=self._name,
            details={"agent": about, "kind": frame.kind}))

    def close(self) -> None:
        """Stop the lanes (a request running on one finishes first)."""
        self._loads.close()
        self._probes.close()


__all__ = ["LOG_TEXT_LIMIT", "PROBE_KINDS", "SLOW_KINDS", "Requests", "clip"]
