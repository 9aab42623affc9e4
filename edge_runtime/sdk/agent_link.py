"""`AgentLink`: one agent as the coordinator's hub sees it, and what its connection says.

Why apart from `hub.py`: the hub moves frames and matches answers; telling a refused
handshake (with the command that fixes it) from a lost connection is a question about
one link, asked by the hub's sends and by its waits alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq

from transports.errors import SecurityError
from transports.handshake import HandshakeStatus, HandshakeWatch
from transports.security import Security


@dataclass
class AgentLink:
    """One agent as the coordinator sees it."""

    name: str
    address: str
    public_key: str | None
    socket: zmq.Socket[bytes]
    watch: HandshakeWatch
    alive: Callable[[], bool] | None = None  # False once a local process has exited
    last_seen: float = field(default_factory=time.monotonic)  # last frame from it
    last_ping: float = 0.0  # last heartbeat sent
    ping_unanswered_since: float | None = None  # oldest heartbeat not answered yet
    dead: bool = False  # declared unavailable; cleared when it answers again
    answered: bool = False  # has sent us anything since it was connected

    def heard(self, now: float) -> None:
        """Anything from the agent: it is alive, and every heartbeat counts as answered."""
        self.last_seen = now
        self.answered = True
        self.ping_unanswered_since = None

    def refused(self, security: Security) -> SecurityError | None:
        """A SecurityError saying how to fix it, if the handshake with this agent failed.

        An agent that answered before and now drops handshakes without a reason is not
        re-keyed or reconfigured but paused or overloaded (a stopped process's kernel
        still accepts the TCP connection, then the handshake times out): that is left to
        the heartbeats.
        A refused key stays an error: the agent restarted without trusting us."""
        state = self.watch.poll()
        if not state.handshake_failed:
            return None
        if self.answered and state.status is not HandshakeStatus.KEY_REFUSED:
            return None
        pair = security.keypair
        return SecurityError(state.explain(self.name, self.address,
                                           None if pair is None else pair.public))

    def connection_lost(self) -> str | None:
        """Why the connection to this agent is down, if the monitor says it is."""
        state = self.watch.poll()
        if state.status in (HandshakeStatus.UNREACHABLE, HandshakeStatus.DISCONNECTED):
            return state.explain(self.name, self.address, None)
        return None


__all__ = ["AgentLink"]
