"""`decode_message`: a received frame's meta as the one record its kind calls for."""

from __future__ import annotations

from edge_runtime.protocol import control as c
from edge_runtime.protocol import data as d
from edge_runtime.protocol import trace as t
from edge_runtime.protocol.kinds import REPLY
from edge_runtime.protocol.record import Message, Record
from edge_runtime.protocol.records import ErrorInfo
from transports.errors import ProtocolError
from transports.wire import Frame

MESSAGES: dict[str, type[Record]] = {
    cls.KIND: cls for cls in (
        c.Hello, c.Ping, c.Profile, c.Join, c.ProbeLink, c.HasShards, c.PutChunk, c.Deploy,
        c.Unload, c.Status, c.Shutdown, c.Renew,
        d.Run, d.Activation, d.RunResult, d.SetExit,
        d.LlmReady, d.LlmConnect, d.LlmStep, d.LlmPut, d.LlmHidden, d.LlmCancel, ErrorInfo,
        t.TraceGet,
    )
}
"""Frame kind -> the record its meta must be (every kind but "reply")."""


def decode_message(frame: Frame) -> Message:
    """The typed record of `frame` (validated); ProtocolError for anything else.

    Replies ("reply") are not decoded here: their record depends on the request,
    so the caller that awaits one decodes it with that reply's `from_meta`.
    """
    cls = MESSAGES.get(frame.kind)
    if cls is None:
        if frame.kind == REPLY:
            raise ProtocolError("a reply arrived where a request was expected")
        raise ProtocolError(f"unknown message kind {frame.kind[:64]!r}")
    return cls.from_meta(frame.meta)
