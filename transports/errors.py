"""Errors raised by `transports`: malformed messages, timeouts, refused peers."""

from __future__ import annotations


class TransportError(Exception):
    """Base of every error raised by `transports`."""


class ProtocolError(TransportError):
    """A received message violates the wire format; `reason` says which rule."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"protocol error: {reason}")
        self.reason = reason


class PeerTimeoutError(TransportError):
    """A peer did not answer within the timeout; `peer` names it."""

    def __init__(self, peer: str, timeout_s: float, what: str = "reply") -> None:
        super().__init__(f"peer {peer} sent no {what} within {timeout_s:g} s")
        self.peer = peer
        self.timeout_s = timeout_s


class SecurityError(TransportError):
    """Keys are missing, malformed, or a peer is not trusted."""


class DataAuthError(SecurityError):
    """A sealed collective message was refused: tampered, sealed with another key,
    replayed, addressed to another member, or malformed (`transports.sealing`). The
    receiver drops it and keeps serving."""


class CollectiveError(TransportError):
    """A collective operation failed; `member` names the member that broke it."""

    def __init__(self, message: str, member: str = "") -> None:
        super().__init__(message)
        self.member = member


class RemoteError(TransportError):
    """A peer answered with an error frame.

    `error_type` is the class name of the error on the remote side (e.g.
    ``"ProtocolError"``, ``"InputError"``), `remote_message` its message, and
    `peer` who sent it, so a caller can tell a bad request of its own from a
    broken peer without parsing text.
    """

    def __init__(self, error_type: str, message: str, peer: str = "") -> None:
        where = f" from {peer}" if peer else ""
        super().__init__(f"remote {error_type}{where}: {message}")
        self.error_type = error_type
        self.remote_message = message
        self.peer = peer


class PeerUnreachableError(TransportError):
    """A message could not be routed to a peer (it is not connected, or was never seen)."""

    def __init__(self, peer: str, message: str = "") -> None:
        super().__init__(
            message or f"peer {peer} is not connected; it may have exited or never connected"
        )
        self.peer = peer
