"""The sending and receiving half of a collective group member: encoding, sealing,
link emulation and blocking receives.

Why apart from `transports.group`: that module decides *what* a member waits for
(matching by call, step and source; aborts; naming a dead member); this one only moves
one message at a time, so both stay one job each. `GroupMember` inherits it and sets
the attributes declared here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import zmq

from transports.datawire import encode_data
from transports.errors import CollectiveError, DataAuthError
from transports.groupstream import StreamLinks
from transports.linkemu import LinkEmulator, Outbox
from transports.sealing import Sealer
from transports.sockets import poll_ms
from transports.wire import Frame, encode

log = logging.getLogger("transports.group")

RECV_SLICE_MS = 1000
"""Longest one blocking receive waits before the member looks at its deadline again.
Receives block in libzmq (``ZMQ_RCVTIMEO``) instead of polling first: one call per
message, no poller; the option is only changed when a deadline is under a slice away."""

DATA = "c"
"""The kind of a data message sent as a general `Frame` (compressed data)."""
# Refused sealed messages logged one by one; after that, one line per this many.
_LOG_FIRST_REFUSALS = 10
_LOG_EVERY_REFUSALS = 1000


class GroupWire:
    """One member's sockets: DEALERs out (`_peers`), the listener's ROUTER in."""

    rank: int
    compression: str | None
    rejected: int
    _split_bytes: int | None
    _peers: list[zmq.Socket[bytes] | None]
    _router: zmq.Socket[bytes]
    _rcvtimeo: int | None
    _emulation: LinkEmulator | None
    _outbox: Outbox | None
    _sealer: Sealer | None
    _links: StreamLinks | None
    _broken: str | None
    spin_us: int

    def _fail(self, culprit: int, why: str) -> CollectiveError:
        raise NotImplementedError  # the group's: marks it broken and tells the others

    # ----------------------------------------------------------------- messaging

    def _send(self, dst: int, seq: int, step: int, array: np.ndarray | None, kind: str = DATA,
              meta: dict[str, Any] | None = None) -> None:
        self._send_parts(dst, self._encode(seq, step, array, kind, meta))

    def _send_all(self, dsts: Sequence[int], seq: int, step: int, array: np.ndarray) -> None:
        """The same data message to several members, encoded once."""
        parts = self._encode(seq, step, array, DATA, None)
        for dst in dsts:
            self._send_parts(dst, parts)

    def _encode(self, seq: int, step: int, array: np.ndarray | None, kind: str,
                meta: dict[str, Any] | None) -> list[Any]:
        """Data: the lean `datawire` format (general `Frame`s when compressing);
        control messages (ping, pong, abort): `Frame`s."""
        if kind == DATA and array is not None and self.compression is None:
            return encode_data(seq, step, self.rank, array, split_bytes=self._split_bytes)
        tensors = {} if array is None else {"x": array}
        frame = Frame(kind, seq, meta={"r": self.rank, "s": step, **(meta or {})}, tensors=tensors)
        return encode(frame, compression=self.compression if kind == DATA else None,
                      split_bytes=self._split_bytes)

    def _send_parts(self, dst: int, parts: list[Any]) -> None:
        if self._links is not None:
            self._stream_send(dst, parts)
            return
        socket = self._peers[dst]
        assert socket is not None
        if self._emulation is None or self._outbox is None:
            self._raw_send(socket, parts, dst)
            return
        due = self._emulation.schedule(str(dst), sum(memoryview(p).nbytes for p in parts))
        if due is None:
            return
        held = [bytes(p) for p in parts]
        self._outbox.push(due, lambda: self._raw_send(socket, held, dst))
        self._outbox.flush()

    def _raw_send(self, socket: zmq.Socket[bytes], parts: Sequence[Any], dst: int) -> None:
        try:
            if self._sealer is not None:  # sealed at the moment it leaves: counters in order
                sealed = self._sealer.seal(dst, parts)
                if len(sealed) < zmq.COPY_THRESHOLD:
                    socket.send(sealed)
                else:
                    socket.send(sealed, copy=False)
            elif len(parts) == 1:  # a small data message: one frame, copied by libzmq anyway
                socket.send(parts[0])
            else:
                socket.send_multipart(parts, copy=False)
        except zmq.Again:
            raise self._fail(dst, "its send queue stayed full") from None

    def _stream_send(self, dst: int, parts: list[Any]) -> None:
        assert self._links is not None
        try:
            if self._sealer is not None:
                self._links.send(dst, [self._sealer.seal(dst, parts)])
            else:
                self._links.send(dst, parts)
        except CollectiveError as error:
            if self._broken is not None:  # failing already (telling the others): no loop
                raise
            raise self._fail(dst, f"is unreachable ({error})") from None

    def _unseal(self, received: list[Any]) -> list[Any] | None:
        """The message's parts opened (sealed groups), or None when it was refused
        (counted, logged at most now and then)."""
        if self._sealer is None:
            return received
        try:
            return self._sealer.open(received)
        except DataAuthError as error:
            self._refused(error)
            return None

    def _refused(self, error: DataAuthError) -> None:
        """Count and log (rate-limited) a sealed message that was refused."""
        self.rejected += 1
        if self.rejected <= _LOG_FIRST_REFUSALS or self.rejected % _LOG_EVERY_REFUSALS == 0:
            log.warning("rank %d refused a collective message (%d so far): %s", self.rank,
                        self.rejected, error)

    def _recv_parts(self, deadline: float) -> list[Any] | None:
        """One message's parts (without the ROUTER's routing id), blocking in libzmq
        until it comes or `deadline` passes; with `spin_us`, first asking without
        blocking for up to that long (see `spin_us`)."""
        if self._links is not None:
            return self._links.recv(deadline, self.spin_us)
        if self.spin_us > 0:
            router = self._router
            spin_end = time.perf_counter() + self.spin_us * 1e-6
            while True:
                try:
                    spun: list[zmq.Frame] = router.recv_multipart(zmq.NOBLOCK, copy=False)
                    return spun[1:]
                except zmq.Again:
                    if time.perf_counter() >= spin_end:
                        break
        while True:
            remaining_ms = int((deadline - time.monotonic()) * 1000 + 0.999)
            timeout_ms = max(0, min(RECV_SLICE_MS, remaining_ms))
            if timeout_ms != self._rcvtimeo:
                self._router.rcvtimeo = self._rcvtimeo = timeout_ms
            try:
                parts: list[zmq.Frame] = self._router.recv_multipart(copy=False)
                return parts[1:]
            except zmq.Again:
                if time.monotonic() >= deadline:
                    return None

    def _recv_emulated(self, deadline: float) -> list[zmq.Frame] | None:
        """One message's parts while emulated sends may be pending: poll in slices and
        send what falls due meanwhile."""
        assert self._outbox is not None
        self._outbox.flush()
        try:  # a message already waiting needs no poller (the common case under load)
            parts: list[zmq.Frame] = self._router.recv_multipart(zmq.NOBLOCK, copy=False)
            return parts[1:]
        except zmq.Again:
            pass
        while True:
            self._outbox.flush()
            wait = self._outbox.poll_timeout(deadline)
            if self._router.poll(poll_ms(wait, self._outbox)):
                parts = self._router.recv_multipart(copy=False)
                return parts[1:]
            if time.monotonic() >= deadline:
                return None
