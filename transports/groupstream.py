"""Plain TCP links for a collective group: the calling thread writes to and reads from
the kernel itself, with no ZeroMQ I/O thread in between.

Why: a ZeroMQ message crosses two extra threads (the sender's and the receiver's I/O
threads), each a wake-up and, when the process is pinned to one core, a context switch
on that core. Measured between two pinned processes on the 2-core dev box, an 8 KB
round trip takes ≈ 90 µs over DEALER/ROUTER and ≈ 40 µs over plain TCP, ≈ 22 µs when
the receiver spins on a non-blocking read (spinning saves nothing over ZeroMQ: the
message still waits for the I/O thread). An allreduce of a tensor-parallel token is a
few such hops, a dozen times per token.

Security is not this module's job: a group that uses it seals every message
(`transports.sealing`; refused messages are counted, the group serves on) or runs
``--insecure``. What it does guard: a message declared larger than
`max_message_bytes` closes that connection before anything is buffered, a connection
that sends half a message holds up nobody (each has its own read state), and a peer
that stops reading cannot deadlock a large send (while a send would block, incoming
messages are read and queued).

Framing and the read side of one connection: `transports.streamframes`. Whole messages
are handed out one per connection per turn (a connection with more buffered is served
again on the next turn, before any waiting), so members and strangers take turns.
"""

from __future__ import annotations

import collections
import select
import socket
import time
from collections.abc import Sequence
from typing import Any

from transports.errors import CollectiveError
from transports.streamframes import BrokenStream, Incoming, frame

_LISTEN_BACKLOG = 64
_POLL_IN = select.POLLIN | select.POLLERR | select.POLLHUP
_CONNECT_RETRY_S = 0.02
MAX_INCOMING = 256
"""Connections a member keeps accepted at once: a group of up to 256 members, and a
stranger opening more is refused instead of exhausting the process's descriptors."""


def _host_port(endpoint: str) -> tuple[str, int]:
    if not endpoint.startswith("tcp://"):
        raise CollectiveError(f"a stream group needs tcp:// endpoints, got {endpoint!r}")
    host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    if not host or not port.isdigit():
        raise CollectiveError(f"bad endpoint {endpoint!r}; use tcp://host:port")
    return host.strip("[]"), int(port)


class StreamListener:
    """A bound, listening TCP socket for a stream group (``tcp://host:0`` picks a port)."""

    def __init__(self, bind_address: str, *, max_message_bytes: int) -> None:
        host, port = _host_port(bind_address)
        self.max_message_bytes = max_message_bytes
        self.socket = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind((host, port))
            self.socket.listen(_LISTEN_BACKLOG)
            self.socket.setblocking(False)
        except BaseException:
            self.socket.close()
            raise
        bound_host, bound_port = self.socket.getsockname()[:2]
        self.address = f"tcp://{bound_host}:{bound_port}"
        # what a closed group left for the next one on this listener (keep_listener)
        self.inherited: list[Incoming] = []
        self.inherited_ready: list[list[memoryview]] = []

    @property
    def closed(self) -> bool:
        return self.socket.fileno() < 0

    def close(self) -> None:
        for conn in self.inherited:
            conn.sock.close()
        self.inherited.clear()
        self.inherited_ready.clear()
        self.socket.close()


class StreamLinks:
    """Member `rank`'s links: one outgoing connection per other member (sends) and the
    connections accepted on `listener` (receives, from members or anyone)."""

    def __init__(self, rank: int, endpoints: Sequence[str], listener: StreamListener,
                 timeout_s: float) -> None:
        self.rank = rank
        self._listener = listener
        self._max = listener.max_message_bytes
        self._timeout_s = timeout_s
        self._out: list[socket.socket | None] = [None] * len(endpoints)
        self._targets = [_host_port(e) if i != rank else None for i, e in enumerate(endpoints)]
        self._incoming: dict[int, Incoming] = {}
        self._ready: collections.deque[list[memoryview]] = collections.deque()
        self._backlog: dict[int, Incoming] = {}  # connections with whole messages buffered
        self._poller = select.poll()
        self._poller.register(listener.socket.fileno(), select.POLLIN)
        for conn in listener.inherited:  # connections an earlier group on it accepted
            self._incoming[conn.sock.fileno()] = conn
            self._poller.register(conn.sock.fileno(), _POLL_IN)
            if conn.more:  # whole messages it had buffered: served on the first turn
                self._backlog[conn.sock.fileno()] = conn
        self._ready.extend(listener.inherited_ready)
        listener.inherited, listener.inherited_ready = [], []

    # ------------------------------------------------------------------- sending

    def _connection(self, dst: int) -> socket.socket:
        sock = self._out[dst]
        if sock is not None:
            return sock
        target = self._targets[dst]
        if target is None:
            raise CollectiveError(f"rank {self.rank} cannot send to itself")
        deadline = time.monotonic() + self._timeout_s
        while True:  # the peer's listener is bound before anyone connects; retry briefly
            try:
                sock = socket.create_connection(target, timeout=self._timeout_s)
                break
            except OSError as error:
                if time.monotonic() >= deadline:
                    raise CollectiveError(f"cannot connect to rank {dst} at {target}: {error}",
                                          member=f"rank {dst}") from None
                time.sleep(_CONNECT_RETRY_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        self._out[dst] = sock
        return sock

    def send(self, dst: int, parts: Sequence[Any]) -> None:
        """One framed message to `dst`. While the kernel cannot take more (a peer not
        reading yet), incoming messages are read and queued, so two members sending
        each other large tensors at once never wait on each other."""
        sock = self._connection(dst)
        try:
            pending = frame(parts)
        except ValueError as error:
            raise CollectiveError(str(error)) from None
        self._send_all(sock, dst, pending)

    def _send_all(self, sock: socket.socket, dst: int, pending: list[memoryview]) -> None:
        """Send `pending` whole: one call when the kernel takes it all (the common
        case), else waiting for room and reading incoming messages meanwhile."""
        deadline = 0.0
        while pending:
            try:
                sent = sock.send(pending[0]) if len(pending) == 1 else sock.sendmsg(pending)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as error:
                raise CollectiveError(f"sending to rank {dst} failed: {error}",
                                      member=f"rank {dst}") from None
            while sent and pending:
                if sent >= pending[0].nbytes:
                    sent -= pending[0].nbytes
                    pending.pop(0)
                else:
                    pending[0] = pending[0][sent:]
                    sent = 0
            if pending:
                now = time.monotonic()
                if not deadline:
                    deadline = now + self._timeout_s
                elif now >= deadline:
                    raise CollectiveError(f"rank {dst} took nothing for {self._timeout_s:g} s",
                                          member=f"rank {dst}")
                self._wait_writable(sock)

    def _wait_writable(self, sock: socket.socket) -> None:
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLOUT)
        for fd in self._fds():
            poller.register(fd, select.POLLIN)
        for fd, _ in poller.poll(100):
            if fd != sock.fileno():
                self._on_readable(fd)

    # ----------------------------------------------------------------- receiving

    def _fds(self) -> list[int]:
        return [self._listener.socket.fileno(), *self._incoming]

    def recv(self, deadline: float, spin_us: int = 0) -> list[memoryview] | None:
        """The parts of one whole message from any connection; None once `deadline`
        passes. With `spin_us`, polls without sleeping for up to that long first."""
        if self._ready:
            return self._ready.popleft()
        if spin_us > 0:
            spin_end = time.perf_counter() + spin_us * 1e-6
            while True:
                self._turn(0)
                if self._ready:
                    return self._ready.popleft()
                if time.perf_counter() >= spin_end:
                    break
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._turn(0 if self._backlog else
                       min(1000, max(1, int(remaining * 1000 + 0.999))))
            if self._ready:
                return self._ready.popleft()

    def _turn(self, timeout_ms: int) -> None:
        """One turn, one message per connection at most: the next message of every
        readable connection (and new connections accepted), then of every connection
        with whole messages still buffered."""
        for fd, _ in self._poller.poll(timeout_ms):
            self._on_readable(fd)
        if self._backlog:
            for conn in list(self._backlog.values()):
                self._serve(conn, read=False)

    def _on_readable(self, fd: int) -> None:
        if fd == self._listener.socket.fileno():
            self._accept()
            return
        conn = self._incoming.get(fd)
        if conn is not None and not conn.more:  # else: its turn comes from the backlog
            self._serve(conn, read=True)

    def _serve(self, conn: Incoming, *, read: bool) -> None:
        """Queue the connection's next whole message, reading first when `read`; a
        connection that closed or sent what cannot be a message is dropped."""
        try:
            if read and not conn.read():
                self._drop(conn)
                return
            parts = conn.take()
        except BrokenStream:
            self._drop(conn)  # a stranger's or a broken frame: not one byte more
            return
        if parts is not None:
            self._ready.append(parts)
        if conn.more:
            self._backlog[conn.sock.fileno()] = conn
        elif self._backlog:
            self._backlog.pop(conn.sock.fileno(), None)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. too many open files: leave it queued, try later
                return
            if len(self._incoming) >= MAX_INCOMING:
                sock.close()  # a flood of connections: members connect once each
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._incoming[sock.fileno()] = Incoming(sock, self._max)
            self._poller.register(sock.fileno(), _POLL_IN)

    def _drop(self, conn: Incoming) -> None:
        fd = conn.sock.fileno()
        self._incoming.pop(fd, None)
        self._backlog.pop(fd, None)
        self._poller.unregister(fd)
        conn.sock.close()

    def close(self, *, keep_incoming: bool = False) -> None:
        """Close the outgoing connections; the incoming ones too, unless `keep_incoming`:
        then they (and messages read but not taken) pass to the next group built on the
        listener, since a member that rebuilt its group first may already be sending."""
        for sock in self._out:
            if sock is not None:
                sock.close()
        self._out = [None] * len(self._out)
        if keep_incoming and not self._listener.closed:
            self._listener.inherited.extend(self._incoming.values())
            self._listener.inherited_ready.extend(self._ready)
            self._incoming.clear()
            self._ready.clear()
            return
        for conn in list(self._incoming.values()):
            self._drop(conn)


__all__ = ["StreamLinks", "StreamListener"]
