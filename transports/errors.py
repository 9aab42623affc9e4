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


class CollectiveError(TransportError):
    """A collective operation failed; `member` names the member that broke it."""

    def __init__(self, message: str, member: str = "") -> None:
        super().__init__(message)
        self.member = member
