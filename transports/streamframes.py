"""How a stream group's messages are framed on a TCP connection, and one accepted
connection's read side.

Why apart from `transports.groupstream`: that module keeps a member's connections and
decides when to read which; this one only turns parts into bytes and bytes back into
parts, so each stays one job and the byte-level rules can be read (and fuzzed) alone.

Framing: u32 length of the rest | u16 part count | u32 length per part | the parts.

The read side costs one system call per message in the common case: a connection reads
into its own buffer as much as the kernel has, so a message's length prefix and body
(and whatever follows) come in one ``recv_into``. A message larger than that buffer is
read into memory of its own that grows with the bytes that come, not with the length
the prefix claims. At most one message is taken from a connection at a time
(`Incoming.take`), and a connection with whole messages still buffered is not read
again until they are taken, so a stranger who sends thousands of tiny frames in one
write is served one frame per turn, like everyone else, and what it may make a member
hold stays one buffer.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Sequence
from typing import Any

from transports.pieces import part_view

LENGTH = struct.Struct("<I")
_COUNT = struct.Struct("<H")
_ONE_PART_HEAD = struct.Struct("<IHI")  # length of the rest | part count 1 | part length
_ONE_PART_TABLE = struct.Struct("<HI")
MAX_PARTS = 4096
SMALL_SEND_BYTES = 1 << 16
"""Messages up to this size are joined into one buffer and sent with one system call."""
GROW_BYTES = 1 << 20
"""A message larger than the read buffer is first given this much memory and grows
(doubling) as its bytes arrive, so a connection that declares a large message and sends
little costs little."""
READ_BUFFER_BYTES = 128 * 1024
"""What one connection reads into at a time (allocated at its first bytes, so a stranger
that connects and sends nothing costs nothing): messages up to this size, the common
data message of a decode step included, are read whole with one system call."""
_CLOSED = -1


class BrokenStream(Exception):
    """The connection sent bytes that cannot be a message of ours: drop it."""


def frame(parts: Sequence[Any]) -> list[memoryview]:
    """One message's bytes as they are sent: one buffer when small, else the head and
    the parts themselves (no copy). ValueError for no parts or too many."""
    if len(parts) == 1:  # the common case: one part
        part = parts[0]
        view = part if type(part) is bytes else part_view(part)
        size = len(view)
        if size <= SMALL_SEND_BYTES:
            head = _ONE_PART_HEAD.pack(size + _ONE_PART_TABLE.size, 1, size)
            return [memoryview(head + view)]
    views = [part_view(p) for p in parts]
    if not 0 < len(views) <= MAX_PARTS:
        raise ValueError(f"a message of {len(views)} parts cannot be sent")
    table = _COUNT.pack(len(views)) + struct.pack(f"<{len(views)}I",
                                                  *(v.nbytes for v in views))
    total = len(table) + sum(v.nbytes for v in views)
    head = LENGTH.pack(total) + table
    if total <= SMALL_SEND_BYTES:
        return [memoryview(b"".join([head, *views]))]
    return [memoryview(head), *views]


def split(body: memoryview) -> list[memoryview] | None:
    """The parts of one frame body, or None when its part table does not add up."""
    (count,) = _COUNT.unpack_from(body)
    if count == 1 and body.nbytes >= _ONE_PART_TABLE.size:  # the common case
        if _ONE_PART_TABLE.unpack_from(body)[1] != body.nbytes - _ONE_PART_TABLE.size:
            return None
        return [body[_ONE_PART_TABLE.size:]]
    start = _COUNT.size + 4 * count
    if not 0 < count <= MAX_PARTS or start > body.nbytes:
        return None
    lengths = struct.unpack_from(f"<{count}I", body, _COUNT.size)
    if start + sum(lengths) != body.nbytes:
        return None
    parts = []
    for length in lengths:
        parts.append(body[start:start + length])
        start += length
    return parts


class Incoming:
    """One accepted connection's read state: its read buffer (bytes `start`..`end` not
    taken yet), or the body of a message too large for it, filled up to `got`."""

    __slots__ = ("_max", "body", "buffer", "end", "got", "length", "more", "sock", "start")

    def __init__(self, sock: socket.socket, max_message_bytes: int) -> None:
        self.sock = sock
        self._max = max_message_bytes
        self.buffer: memoryview | None = None  # allocated when the first bytes come
        self.start = self.end = 0
        self.body: bytearray | None = None  # a large message being read on its own
        self.length = 0  # of that body; `body` grows towards it as bytes come
        self.got = 0
        # whether a whole message (or bytes that cannot start one) waited in the buffer
        # after the last `take`: taken on the next turn, before the connection is read again
        self.more = False

    def _fits(self, length: int) -> bool:
        return _COUNT.size <= length <= self._max

    def _more_waiting(self) -> bool:
        """`more`, worked out from the bytes left in the buffer after a message."""
        buffer, start = self.buffer, self.start
        assert buffer is not None
        if self.end - start < LENGTH.size:
            return False
        (length,) = LENGTH.unpack_from(buffer, start)
        return not self._fits(length) or start + LENGTH.size + length <= self.end

    def read(self) -> bool:
        """Read once what the kernel has (nothing while a whole message waits to be
        taken); False when the other end closed the connection or reset it."""
        if self.body is not None:
            return self._read_body()
        if self.buffer is None:
            self.buffer = memoryview(bytearray(READ_BUFFER_BYTES))
        elif self.more:
            return True
        got = self._recv_into(self.buffer[self.end:])
        if got == _CLOSED:
            return False
        self.end += got
        return True

    def take(self) -> list[memoryview] | None:
        """The next whole message's parts, None until one has come; `BrokenStream`
        when the bytes cannot be a message (a length out of range, a bad part table)."""
        if self.body is not None:
            if self.got < self.length:
                return None
            body, self.body, self.got = self.body, None, 0
            return _parts(body)
        buffer, start, end = self.buffer, self.start, self.end
        if buffer is None:
            return None
        self.more = False
        if end - start >= LENGTH.size:
            (length,) = LENGTH.unpack_from(buffer, start)
            if not self._fits(length):
                raise BrokenStream(f"a frame of {length} bytes")
            stop = start + LENGTH.size + length
            if stop <= end:
                parts = _parts(bytearray(buffer[start + LENGTH.size:stop]))
                if stop == end:
                    self.start = self.end = 0
                else:
                    self.start = stop
                    self.more = self._more_waiting()
                    if not self.more:
                        self._compact()
                return parts
            if stop - start > buffer.nbytes:  # larger than the buffer: its own memory
                have = end - start - LENGTH.size
                self.body = bytearray(max(have, min(length, GROW_BYTES)))
                self.body[:have] = buffer[start + LENGTH.size:end]
                self.length, self.got = length, have
                self.start = self.end = 0
                return None
        if start:
            self._compact()
        return None

    def _compact(self) -> None:
        """Move a partial message to the front of the buffer, where it has room to grow
        (a partial message is shorter than the buffer, so the buffer never fills up)."""
        buffer, start, end = self.buffer, self.start, self.end
        assert buffer is not None
        buffer[:end - start] = buffer[start:end]
        self.start, self.end = 0, end - start

    def _read_body(self) -> bool:
        body = self.body
        assert body is not None
        while self.got < self.length:
            if self.got == len(body):
                body.extend(bytes(min(len(body), self.length - self.got)))
            got = self._recv_into(memoryview(body)[self.got:])
            if got == _CLOSED:
                return False
            if not got:
                return True
            self.got += got
        return True

    def _recv_into(self, into: memoryview) -> int:
        """Bytes read into `into`: 0 when none are waiting, `_CLOSED` when the other
        end closed the connection or reset it."""
        try:
            got = self.sock.recv_into(into)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as error:
            if error.errno not in (errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT):
                raise
            return _CLOSED
        return got or _CLOSED


def _parts(body: bytearray) -> list[memoryview]:
    parts = split(memoryview(body))
    if parts is None:
        raise BrokenStream("a part table that does not add up")
    return parts


__all__ = ["GROW_BYTES", "LENGTH", "MAX_PARTS", "READ_BUFFER_BYTES", "SMALL_SEND_BYTES",
           "BrokenStream", "Incoming", "frame", "split"]
