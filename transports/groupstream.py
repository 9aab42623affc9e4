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

Framing: u32 length of the rest | u16 part count | u32 length per part | the parts.

Per message, the hot path is one system call each way: a small message leaves as one
buffer in one ``send``, and each connection reads into its own buffer as much as the
kernel has, so a message's length prefix and body (and whatever follows) come in one
``recv_into``; a message larger than that buffer is read into memory of its own.
"""

from __future__ import annotations

import collections
import errno
import select
import socket
import struct
import time
from collections.abc import Sequence
from typing import Any

from transports.errors import CollectiveError

_LENGTH = struct.Struct("<I")
_COUNT = struct.Struct("<H")
_ONE_PART_HEAD = struct.Struct("<IHI")  # length of the rest | part count 1 | part length
_ONE_PART_TABLE = struct.Struct("<HI")
_MAX_PARTS = 4096
_LISTEN_BACKLOG = 64
_POLL_IN = select.POLLIN | select.POLLERR | select.POLLHUP
_CONNECT_RETRY_S = 0.02
GROW_BYTES = 1 << 20
"""A message body is first given this much memory and grows (doubling) as its bytes
arrive, so a connection that declares a large message and sends little costs little."""
READ_BUFFER_BYTES = 128 * 1024
"""What one connection reads into at a time (allocated at its first bytes, so a stranger
that connects and sends nothing costs nothing): messages up to this size, the common
data message of a decode step included, are read whole with one system call."""
SMALL_SEND_BYTES = 1 << 16
"""Messages up to this size are joined into one buffer and sent with one system call."""
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
        self.inherited: list[_Incoming] = []
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


class _Incoming:
    """One accepted connection's read state: its read buffer (bytes `start`..`end` not
    parsed yet), or the body of a message too large for it, filled up to `got`."""

    __slots__ = ("body", "buffer", "end", "got", "length", "sock", "start")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer: memoryview | None = None  # allocated when the first bytes come
        self.start = self.end = 0
        self.body: bytearray | None = None  # a large message being read on its own
        self.length = 0  # of that body; `body` grows towards it as bytes come
        self.got = 0


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
        self._incoming: dict[int, _Incoming] = {}
        self._ready: collections.deque[list[memoryview]] = collections.deque()
        self._poller = select.poll()
        self._poller.register(listener.socket.fileno(), select.POLLIN)
        for conn in listener.inherited:  # connections an earlier group on it accepted
            self._incoming[conn.sock.fileno()] = conn
            self._poller.register(conn.sock.fileno(), _POLL_IN)
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
        sock = self._out[dst] or self._connection(dst)
        if len(parts) == 1:  # the common case: one small part, one buffer, one call
            part = parts[0]
            size = len(part) if type(part) is bytes else memoryview(part).nbytes
            if size <= SMALL_SEND_BYTES:
                frame = _ONE_PART_HEAD.pack(size + _ONE_PART_HEAD.size - _LENGTH.size, 1,
                                            size) + part
                self._send_all(sock, dst, [memoryview(frame)])
                return
        views = [memoryview(p).cast("B") for p in parts]
        if not 0 < len(views) <= _MAX_PARTS:
            raise CollectiveError(f"a message of {len(views)} parts cannot be sent")
        table = _COUNT.pack(len(views)) + struct.pack(f"<{len(views)}I",
                                                      *(v.nbytes for v in views))
        total = len(table) + sum(v.nbytes for v in views)
        head = _LENGTH.pack(total) + table
        if total <= SMALL_SEND_BYTES:
            self._send_all(sock, dst, [memoryview(b"".join([head, *views]))])
        else:
            self._send_all(sock, dst, [memoryview(head), *views])

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
                for fd, _ in self._poller.poll(0):
                    self._on_readable(fd)
                if self._ready:
                    return self._ready.popleft()
                if time.perf_counter() >= spin_end:
                    break
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            for fd, _ in self._poller.poll(min(1000, max(1, int(remaining * 1000 + 0.999)))):
                self._on_readable(fd)
            if self._ready:
                return self._ready.popleft()

    def _on_readable(self, fd: int) -> None:
        if fd == self._listener.socket.fileno():
            self._accept()
            return
        conn = self._incoming.get(fd)
        if conn is not None:
            self._read(conn)

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
            self._incoming[sock.fileno()] = _Incoming(sock)
            self._poller.register(sock.fileno(), _POLL_IN)

    def _read(self, conn: _Incoming) -> None:
        """Read what the connection has (one call; poll is level-triggered, so more is
        read on the next poll) and queue every message it completes."""
        if conn.body is not None:
            self._read_body(conn)
            return
        if conn.buffer is None:
            conn.buffer = memoryview(bytearray(READ_BUFFER_BYTES))
        got = self._recv_into(conn, conn.buffer[conn.end:])
        if got:
            conn.end += got
            self._parse(conn)

    def _recv_into(self, conn: _Incoming, into: memoryview) -> int:
        """Bytes read into `into`; 0 when none are waiting (the connection is dropped
        when the other end closed it)."""
        try:
            got = conn.sock.recv_into(into)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as error:
            if error.errno not in (errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT):
                raise
            got = 0
        if got == 0:  # closed by the other end (or reset)
            self._drop(conn)
        return got

    def _parse(self, conn: _Incoming) -> None:
        """Queue the whole messages in the read buffer; keep a partial one's bytes."""
        buffer, start, end = conn.buffer, conn.start, conn.end
        assert buffer is not None
        while end - start >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(buffer, start)
            if not _COUNT.size <= length <= self._max:
                self._drop(conn)  # a stranger's or a broken frame: not one byte more
                return
            stop = start + _LENGTH.size + length
            if stop > end:
                if stop - start > buffer.nbytes:  # larger than the buffer: its own memory
                    have = end - start - _LENGTH.size
                    conn.body = bytearray(max(have, min(length, GROW_BYTES)))
                    conn.body[:have] = buffer[start + _LENGTH.size:end]
                    conn.length, conn.got = length, have
                    conn.start = conn.end = 0
                    self._read_body(conn)
                    return
                break
            if not self._queue(conn, bytearray(buffer[start + _LENGTH.size:stop])):
                return
            start = stop
        if start == end:
            conn.start = conn.end = 0
        elif start:  # a partial message: move it to the front, where it has room to grow
            buffer[:end - start] = buffer[start:end]
            conn.start, conn.end = 0, end - start

    def _read_body(self, conn: _Incoming) -> None:
        """Read a large message into its own memory, which grows with the bytes that
        come, not with what the length prefix claims."""
        body = conn.body
        assert body is not None
        while conn.got < conn.length:
            if conn.got == len(body):
                body.extend(bytes(min(len(body), conn.length - conn.got)))
            got = self._recv_into(conn, memoryview(body)[conn.got:])
            if not got:
                return
            conn.got += got
        conn.body, conn.got = None, 0
        self._queue(conn, body)

    def _queue(self, conn: _Incoming, body: bytearray) -> bool:
        """Queue one message's parts; False (and the connection dropped) when its part
        table does not add up."""
        parts = _split(memoryview(body))
        if parts is None:
            self._drop(conn)
            return False
        self._ready.append(parts)
        return True

    def _drop(self, conn: _Incoming) -> None:
        fd = conn.sock.fileno()
        self._incoming.pop(fd, None)
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


def _split(body: memoryview) -> list[memoryview] | None:
    """The parts of one frame body, or None when its part table does not add up."""
    (count,) = _COUNT.unpack_from(body)
    if count == 1 and body.nbytes >= _ONE_PART_TABLE.size:  # the common case
        if _ONE_PART_TABLE.unpack_from(body)[1] != body.nbytes - _ONE_PART_TABLE.size:
            return None
        return [body[_ONE_PART_TABLE.size:]]
    start = _COUNT.size + 4 * count
    if not 0 < count <= _MAX_PARTS or start > body.nbytes:
        return None
    lengths = struct.unpack_from(f"<{count}I", body, _COUNT.size)
    if start + sum(lengths) != body.nbytes:
        return None
    parts = []
    for length in lengths:
        parts.append(body[start:start + length])
        start += length
    return parts


__all__ = ["StreamLinks", "StreamListener"]
