"""What became of a client socket's connection attempts: connected, or why not.

A DEALER that cannot complete its handshake fails silently: sends queue (or,
with ``ZMQ_IMMEDIATE``, wait for a slot) until a timeout says only "no
connection". A socket monitor tells more, within milliseconds of the failure,
so `HandshakeWatch` lets a coordinator turn the wait into a precise message
(`HandshakeState.explain`, using the fix commands of `transports.keys`).

What libzmq 4.3.5 (pyzmq 27) emits on the client, observed on loopback with
real sockets (tests/integration/transports/test_handshake.py checks each):

- success: ``CONNECT_DELAYED``, ``CONNECTED``, ``HANDSHAKE_SUCCEEDED``.
- (a) the server's ZAP handler refuses our key: ``HANDSHAKE_FAILED_AUTH`` with the
  ZAP status code as value (400 from pyzmq's authenticator), then
  ``DISCONNECTED`` within ~2 ms, and libzmq never reconnects that socket: a
  client must open a new one once the key is trusted.
- (b) we hold the wrong server public key: the server cannot decrypt our HELLO
  and drops the connection (it sees ``HANDSHAKE_FAILED_PROTOCOL`` with
  ``ZMTP_CRYPTOGRAPHIC``; its ZAP handler is never asked, so it logs nothing).
  We see ``HANDSHAKE_FAILED_NO_DETAIL`` (value EPIPE), ``DISCONNECTED``,
  ``CONNECT_RETRIED``, and the same again on every retry (~every 100 ms).
  A non-ZeroMQ listener (a closed or HTTP port) looks the same or closes
  with a bare ``DISCONNECTED``, so this state also means "not an agent".
- (c) we run CURVE, the server plain, and (d) the reverse: in one process,
  ``HANDSHAKE_FAILED_PROTOCOL`` with ``PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH``,
  ``DISCONNECTED``, and no retry. Across processes the server usually closes
  before the client reads its greeting (18 of 20 tries): then it is
  ``HANDSHAKE_FAILED_NO_DETAIL`` and retries, as in (b). A plain client's drop
  can only be a CURVE server (or not ZeroMQ); a CURVE client's is told apart
  from (b) by a plain probe connection (`_PlainProbe`).
- (e) nothing listens: ``CONNECT_DELAYED``, ``CLOSED`` (connection refused),
  ``CONNECT_RETRIED`` (value: the next interval in ms), over and over.
- a connected server that goes away: ``DISCONNECTED``, then as in (e) until it
  is back, then ``CONNECTED`` and ``HANDSHAKE_SUCCEEDED`` again.
"""

from __future__ import annotations

import contextlib
import enum
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

import zmq
from zmq.utils.monitor import parse_monitor_message

from transports import keys as _keys

WATCHED_EVENTS = (
    zmq.EVENT_CONNECTED
    | zmq.EVENT_CLOSED
    | zmq.EVENT_CONNECT_RETRIED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)
"""The monitor events `HandshakeWatch` reads (the rest carry nothing it reports)."""

ZAP_REFUSED = 400
"""ZAP status code of a refused key (RFC 27); 300 is a temporary and 500 an internal
failure of the server's authenticator."""

_MAX_EVENTS_PER_POLL = 1000
"""Events read by one `poll` at most, so a socket retrying fast cannot keep it busy."""

PROBE_TIMEOUT_S = 2.0
"""How long a `_PlainProbe` may take to answer before the watch settles on
SERVER_KEY_MISMATCH (it answers in milliseconds from any live server)."""

_HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


class HandshakeStatus(enum.Enum):
    """Where a client's connection stands, from what its monitor has reported."""

    PENDING = "pending"
    """Nothing decisive yet (connecting, or the TCP connection is up mid-handshake)."""
    CONNECTED = "connected"
    """The handshake succeeded and the connection is up."""
    KEY_REFUSED = "key_refused"
    """The server's authenticator refused our key (`HandshakeState.detail`: ZAP status)."""
    SERVER_KEY_MISMATCH = "server_key_mismatch"
    """A CURVE handshake was dropped unanswered: the server key we hold is not the
    server's, or what listens is not an edge-runtime agent."""
    SECURITY_MISMATCH = "security_mismatch"
    """One side runs CURVE and the other plain (ZMTP mechanism mismatch)."""
    PROTOCOL_ERROR = "protocol_error"
    """Another handshake failure (`detail`: libzmq's ZMTP protocol error code)."""
    UNREACHABLE = "unreachable"
    """Nothing accepts connections at the address (refused; libzmq keeps retrying)."""
    DISCONNECTED = "disconnected"
    """The connection was up and dropped; libzmq is reconnecting."""


_FAILURES = frozenset(
    {
        HandshakeStatus.KEY_REFUSED,
        HandshakeStatus.SERVER_KEY_MISMATCH,
        HandshakeStatus.SECURITY_MISMATCH,
        HandshakeStatus.PROTOCOL_ERROR,
    }
)


@dataclass(frozen=True)
class HandshakeState:
    """A snapshot of one client connection.

    `detail` is the ZAP status code (KEY_REFUSED), the ZMTP error code
    (SECURITY_MISMATCH, PROTOCOL_ERROR) or 0. `failed_attempts` counts
    connection attempts that ended without a handshake; `since` is the
    `time.monotonic()` of the last status change.
    """

    status: HandshakeStatus
    detail: int = 0
    failed_attempts: int = 0
    since: float = 0.0

    @property
    def connected(self) -> bool:
        return self.status is HandshakeStatus.CONNECTED

    @property
    def handshake_failed(self) -> bool:
        """True when waiting longer will not help: the peers disagree on keys or security."""
        return self.status in _FAILURES

    def explain(
        self,
        agent: str,
        address: str,
        client_key: bytes | str | None,
        client_name: str | None = None,
    ) -> str:
        """One sentence for the user: what went wrong with `agent` and how to fix it.

        `client_key` is this machine's public key (None when it runs insecure).
        """
        status = self.status
        if status is HandshakeStatus.KEY_REFUSED:
            if self.detail == ZAP_REFUSED and client_key is not None:
                return _keys.key_refused_message(agent, address, client_key, client_name)
            return (
                f"agent {agent} at {address} could not check this machine's key (ZAP status "
                f"{self.detail}); see the agent's log"
            )
        if status is HandshakeStatus.SERVER_KEY_MISMATCH:
            return _keys.server_key_mismatch_message(address)
        if status is HandshakeStatus.SECURITY_MISMATCH:
            return _keys.security_mismatch_message(address, client_insecure=client_key is None)
        if status is HandshakeStatus.PROTOCOL_ERROR:
            return (
                f"the handshake with {address} failed (ZMTP error {self.detail:#x}): is an "
                "edge-runtime agent of a compatible version listening there?"
            )
        if status is HandshakeStatus.UNREACHABLE:
            return (
                f"nothing accepts connections at {address} ({self.failed_attempts} attempts "
                "refused): is the agent running, and are the host and port right?"
            )
        if status is HandshakeStatus.DISCONNECTED:
            return f"the connection to agent {agent} at {address} dropped; reconnecting"
        if status is HandshakeStatus.PENDING:
            return f"no answer yet from {address} (no handshake completed)"
        return f"connected to agent {agent} at {address}"


class _PlainProbe:
    """A throwaway plain (NULL mechanism) connection to a CURVE client's address.

    Why: across processes, a CURVE client whose handshake the server drops sees
    only ``HANDSHAKE_FAILED_NO_DETAIL``, whether the server holds another key or
    runs --insecure (the server closes before the client has read its greeting:
    18 of 20 tries on loopback). A plain handshake tells the two apart: it
    succeeds only against an insecure server. It sends nothing, and is closed as
    soon as it has answered.
    """

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]], address: str) -> None:
        self._socket: zmq.Socket[bytes] = context.socket(zmq.DEALER)
        self._socket.linger = 0
        self._monitor = self._socket.get_monitor_socket(WATCHED_EVENTS)
        self._socket.connect(address)
        self._deadline = time.monotonic() + PROBE_TIMEOUT_S

    def verdict(self) -> HandshakeStatus | None:
        """SECURITY_MISMATCH (the server is plain), SERVER_KEY_MISMATCH (it is CURVE and
        dropped us), UNREACHABLE (no handshake completes at all within the probe's time),
        or None while the probe has not answered."""
        for event, _ in _drain(self._monitor):
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                return HandshakeStatus.SECURITY_MISMATCH
            if event in _PROBE_FAILURES:
                return HandshakeStatus.SERVER_KEY_MISMATCH
        if time.monotonic() >= self._deadline:
            # no handshake either way: a paused or overloaded process (its kernel accepts
            # the TCP connection, nothing answers), not evidence of a wrong key
            return HandshakeStatus.UNREACHABLE
        return None

    def close(self) -> None:
        self._socket.disable_monitor()
        self._monitor.close(linger=0)
        self._socket.close(linger=0)


_PROBE_FAILURES = frozenset(
    {
        zmq.EVENT_HANDSHAKE_FAILED_AUTH,
        zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
        zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
        zmq.EVENT_DISCONNECTED,
    }
)


def _drain(monitor: zmq.Socket[bytes]) -> Iterator[tuple[int, int]]:
    """(event, value) of the monitor events queued now, at most `_MAX_EVENTS_PER_POLL`."""
    for _ in range(_MAX_EVENTS_PER_POLL):
        try:
            parts = monitor.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        event = parse_monitor_message(parts)
        yield int(event["event"]), int(event["value"])


class HandshakeWatch:
    """Reads a client socket's monitor and keeps its `HandshakeState`.

    Attach after `Security.apply_client` (the watch reads whether the socket runs
    CURVE) and before `socket.connect`, so no event is missed. `poll()` never blocks
    and reads only what is queued, so a coordinator can call it on every turn of
    its wait loop. Use from the socket's own thread; `close()` before closing
    the socket (or its context ends with the monitor still open).

    A handshake dropped without a reason is, for a plain client, a CURVE server
    (a plain handshake fails no other way); for a CURVE client it is told apart
    by one `_PlainProbe` (status unchanged until it answers, a few ms).
    """

    def __init__(self, socket: zmq.Socket[bytes]) -> None:
        self._socket = socket
        self._curve = socket.getsockopt(zmq.MECHANISM) == zmq.CURVE
        self._monitor: zmq.Socket[bytes] | None = socket.get_monitor_socket(WATCHED_EVENTS)
        self._state = HandshakeState(HandshakeStatus.PENDING, since=time.monotonic())
        self._handshake_seen = False  # a handshake event since the TCP connection came up
        self._probe: _PlainProbe | None = None
        self._verdict: HandshakeStatus | None = None  # the probe's, for later drops
        self._awaiting_verdict = False  # the last thing that happened was a drop

    @property
    def state(self) -> HandshakeState:
        """The state as of the last `poll` (no new events read)."""
        return self._state

    @property
    def events(self) -> zmq.Socket[bytes] | None:
        """The monitor socket, to poll alongside the watched one: it is readable when
        something happened to the connection (None once closed). Read it with `poll`."""
        return self._monitor

    def poll(self) -> HandshakeState:
        """Read the events queued so far and return the current state."""
        if self._monitor is None:
            return self._state
        for event, value in _drain(self._monitor):
            self._apply(event, value)
        if self._probe is not None:
            verdict = self._probe.verdict()
            if verdict is not None:
                self._probe.close()
                self._probe = None
                # "no handshake at all" may be a pause: probe again at the next drop
                self._verdict = None if verdict is HandshakeStatus.UNREACHABLE else verdict
                if self._awaiting_verdict:
                    self._set(verdict, 0)
        return self._state

    def _apply(self, event: int, value: int) -> None:
        if event == zmq.EVENT_CONNECTED:  # TCP is up; the handshake starts
            self._handshake_seen = False
            return
        if event & _HANDSHAKE_EVENTS:
            self._handshake_seen = True
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self._verdict = None
            self._set(HandshakeStatus.CONNECTED, 0, reset=True)
        elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            self._set(HandshakeStatus.KEY_REFUSED, value, failed=True)
        elif event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
                kind = HandshakeStatus.SECURITY_MISMATCH
            elif self._curve and value == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
                kind = HandshakeStatus.SERVER_KEY_MISMATCH
            else:
                kind = HandshakeStatus.PROTOCOL_ERROR
            self._set(kind, value, failed=True)
        elif event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            self._dropped()
        elif event == zmq.EVENT_CLOSED:  # a connect attempt was refused
            self._verdict = None
            self._set(HandshakeStatus.UNREACHABLE, 0, failed=True)
        elif event == zmq.EVENT_DISCONNECTED:
            if self._state.status is HandshakeStatus.CONNECTED:
                self._verdict = None
                self._set(HandshakeStatus.DISCONNECTED, 0)
            elif not self._handshake_seen:
                self._dropped()  # closed before any handshake event: a drop too
            # after a handshake failure, the disconnect that follows adds nothing
        # CONNECT_RETRIED changes nothing a user needs to know

    def _dropped(self) -> None:
        """The server closed the connection mid-handshake and gave no reason."""
        self._handshake_seen = True
        if not self._curve:
            self._set(HandshakeStatus.SECURITY_MISMATCH, 0, failed=True)
            return
        if self._verdict is not None:
            self._set(self._verdict, 0, failed=True)
            return
        self._state = replace(self._state, failed_attempts=self._state.failed_attempts + 1)
        self._awaiting_verdict = True
        if self._probe is None:
            address = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
            self._probe = _PlainProbe(self._socket.context, address)

    def _set(self, status: HandshakeStatus, detail: int, *, failed: bool = False,
             reset: bool = False) -> None:
        self._awaiting_verdict = False
        state = self._state
        attempts = 0 if reset else state.failed_attempts + (1 if failed else 0)
        since = state.since if status is state.status else time.monotonic()
        self._state = replace(state, status=status, detail=detail, failed_attempts=attempts,
                              since=since)

    def close(self) -> None:
        """Stop monitoring (idempotent); the socket itself stays open."""
        if self._probe is not None:
            self._probe.close()
            self._probe = None
        monitor, self._monitor = self._monitor, None
        if monitor is None:
            return
        with contextlib.suppress(zmq.ZMQError):  # the socket closed first: nothing to detach
            self._socket.disable_monitor()
        monitor.close(linger=0)
