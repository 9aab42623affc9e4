"""Group messaging for collectives: one ROUTER in (a `GroupListener`, see
`transports.grouplistener`), one DEALER to each peer, messages matched by
(call sequence, step, source), and failure detection.

Failure: if a member does not deliver within `timeout_s`, the member waiting
for it probes it (``ping``; a live member answers with whom it waits on, and the
chain is followed) so that the dead or stuck member is named, not a live hub
stuck behind it; it then raises `CollectiveError` naming it and tells the others
(an ``abort`` message), so every live member fails fast naming the same culprit.
The error comes within `timeout_s` plus one liveness grace (≤ 1 s) per probed
member. A group that failed stays failed: rebuild it.

Sealing: with `seal_keys`, every message the group sends (data and control) is one
AEAD-sealed frame (`transports.sealing`) and every message it receives must be one;
anything else is refused (`DataAuthError`, counted in `rejected`, logged) and the
group serves on. Pair it with plain sockets (`Security(insecure=True)`) to replace
CURVE's per-frame cost by a cheaper AEAD while every byte stays encrypted and
authenticated.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import zmq

from transports.datawire import decode_data, is_data_message
from transports.errors import CollectiveError, ProtocolError
from transports.grouplistener import GroupListener as GroupListener  # re-exported, as before
from transports.groupstream import StreamLinks, StreamListener
from transports.groupwire import GroupWire
from transports.linkemu import LinkEmulator, Outbox
from transports.sealing import Sealer, SealKeys
from transports.security import Security
from transports.sockets import configure_socket
from transports.syncformat import check_sync
from transports.wire import DEFAULT_MAX_MESSAGE_BYTES, decode

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0
"""Longest a collective call waits for any member before failing: generous for a
4 MB tensor over slow Wi-Fi, short enough that a dead device is noticed quickly."""

_ABORT = "abort"
# How often a wait inside a collective looks for a cancel from another thread.
CANCEL_CHECK_S = 0.1
_PING = "ping"
_PONG = "pong"


def _liveness_grace(timeout_s: float) -> float:
    """How long a member that timed out waits for a liveness answer from each member
    it probes: a quarter of the timeout, between 0.2 s and 1 s (a live member answers
    within a round trip; a dead one never does)."""
    return min(1.0, max(0.2, timeout_s / 4))


class GroupMember(GroupWire):
    """Member `rank` of the group whose members listen at `endpoints`.

    `peer_keys[i]` is member i's CURVE public key (z85); each member admits the
    others' keys and checks the key of each member it dials. Without `peer_keys`,
    server keys are looked up by address in `security.trusted_dir`. Pass a bound
    `listener` when endpoints[rank] was bound on port 0.
    """

    def __init__(
        self,
        rank: int,
        endpoints: Sequence[str],
        security: Security,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        peer_keys: Sequence[bytes] | None = None,
        listener: GroupListener | StreamListener | None = None,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        emulation: LinkEmulator | None = None,
        compression: str | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        seal_keys: SealKeys | None = None,
        cipher: str | None = None,
        spin_us: int = 0,
        sync: str = "fp32",
    ) -> None:
        self.size = len(endpoints)
        if not 0 <= rank < self.size:
            raise CollectiveError(f"rank {rank} is outside a group of {self.size} members")
        if peer_keys is not None and len(peer_keys) != self.size:
            raise CollectiveError(f"{len(peer_keys)} peer keys for {self.size} members")
        self.rank = rank
        self.endpoints = list(endpoints)
        self.timeout_s = timeout_s
        self.compression = compression
        self.spin_us = max(0, int(spin_us))
        self.sync = check_sync(sync)
        self.max_message_bytes = max_message_bytes
        self._split_bytes = security.split_bytes
        if listener is not None and listener.closed:
            raise CollectiveError(
                "the listener is closed (CollectiveGroup.close() closes it unless "
                "keep_listener=True); bind a new GroupListener"
            )
        self._links: StreamLinks | None = None
        self._listener: GroupListener | StreamListener
        if isinstance(listener, StreamListener):  # plain TCP links, no ZeroMQ
            if emulation is not None or not security.insecure:
                raise CollectiveError("a StreamListener group runs over plain TCP: pass "
                                      "Security(insecure=True) (seal it with seal_keys) "
                                      "and no link emulation")
            self._listener = listener
            self._links = StreamLinks(rank, endpoints, listener, timeout_s)
        else:
            self._listener = listener or GroupListener(
                endpoints[rank], security, context=context,
                max_message_bytes=max_message_bytes, peer_keys=peer_keys or ())
            self._context = self._listener.context
            self._router = self._listener.socket
        self._emulation = emulation
        self._outbox = Outbox(emulation.clock) if emulation else None
        self._inbox: dict[tuple[int, int, int], np.ndarray | None] = {}
        self._rcvtimeo: int | None = None  # the router's ZMQ_RCVTIMEO as last set here
        self._aborts: dict[int, tuple[int, str]] = {}
        self._cancelled = threading.Event()
        self._pongs: dict[int, int] = {}
        self._waiting_on = -1
        self._seq = 0
        self._broken: str | None = None
        self._closed = False
        self._peers: list[zmq.Socket[bytes] | None] = [None] * self.size
        if seal_keys is not None and (seal_keys.rank != rank
                                      or len(seal_keys.secrets) != self.size):
            raise CollectiveError(f"seal keys of rank {seal_keys.rank} for "
                                  f"{len(seal_keys.secrets)} members given to rank {rank} of "
                                  f"{self.size}")
        self._sealer = None if seal_keys is None else Sealer(seal_keys, cipher=cipher)
        self.rejected = 0  # sealed messages refused (tampered, replayed, wrong key, ...)
        self.cipher = None if self._sealer is None else self._sealer.cipher
        try:
            self._connect(security, peer_keys)
        except BaseException:
            self.close()
            raise

    def _connect(self, security: Security, peer_keys: Sequence[bytes] | None) -> None:
        if not isinstance(self._listener, GroupListener):
            return  # stream links connect on their first message
        authorizer = self._listener.authorizer
        if authorizer is not None and peer_keys is not None:
            for key in peer_keys:  # before dialling anyone (see GroupListener)
                authorizer.allow(key)
        for other in range(self.size):
            if other == self.rank:
                continue
            socket = self._context.socket(zmq.DEALER)
            configure_socket(socket)
            # a fresh identity per group: a rebuilt group's DEALER must not collide with
            # the old one's lingering connection (the ROUTER would drop its messages)
            socket.setsockopt(zmq.IDENTITY, b"%d-%s" % (self.rank, os.urandom(6).hex().encode()))
            server_key = None
            if not security.insecure:
                server_key = (
                    peer_keys[other]
                    if peer_keys is not None
                    else security.server_key_for(self.endpoints[other])
                )
            security.apply_client(socket, server_key)
            socket.connect(self.endpoints[other])
            self._peers[other] = socket

    @property
    def address(self) -> str:
        return self._listener.address

    def member_name(self, rank: int) -> str:
        return f"rank {rank} ({self.endpoints[rank]})"

    def _receive(self, deadline: float) -> bool:
        """Receive one message into the inbox; False if the deadline passed first.

        Once the deadline has passed this returns False without receiving, so a peer
        flooding the listener (with junk or not) cannot keep a wait alive forever. A
        message that cannot be used is logged and dropped: no error from handling one
        message escapes into the collective call."""
        if time.monotonic() >= deadline:
            return False
        emulated = self._outbox is not None
        received = self._recv_emulated(deadline) if emulated else self._recv_parts(deadline)
        if received is None:
            return False
        parts = self._unseal(received)
        if parts is None:
            return True
        try:
            if parts and is_data_message(parts[0]):
                self._on_data(parts)
            else:
                self._on_frame(parts)
        except ProtocolError as error:
            log.warning("rank %d dropped a malformed collective message: %s", self.rank, error)
        except Exception:  # a bug, not the peer's fault alone: log it, keep the group alive
            log.exception("rank %d dropped a collective message it failed to handle", self.rank)
        return True

    def _on_data(self, parts: list[Any]) -> None:
        """A lean `datawire` data message: into the inbox, or ProtocolError."""
        message = decode_data(parts, max_message_bytes=self.max_message_bytes)
        if message.source >= self.size:
            raise ProtocolError(f"source rank {message.source} is not in the group")
        if message.seq >= self._seq:  # else: left over from a call that already failed
            self._inbox[(message.seq, message.step, message.source)] = message.tensor

    def _on_frame(self, parts: list[Any]) -> None:
        """A general `Frame`: control (ping, pong, abort) or compressed data;
        ProtocolError if it is malformed."""
        frame = decode(parts, max_message_bytes=self.max_message_bytes)
        src, step = frame.meta.get("r"), frame.meta.get("s")
        if type(src) is not int or not 0 <= src < self.size or type(step) is not int:
            raise ProtocolError("collective message without a valid source rank and step")
        if frame.kind == _PING:  # liveness probe from a member that timed out waiting
            with contextlib.suppress(CollectiveError, zmq.ZMQError):
                self._send(src, frame.request_id, -1, None, _PONG, {"w": self._waiting_on})
            return
        if frame.kind == _PONG:
            waiting_on = frame.meta.get("w")
            self._pongs[src] = waiting_on if type(waiting_on) is int else -1
            return
        if frame.request_id < self._seq:
            return  # left over from a call that already failed
        if frame.kind == _ABORT:
            culprit = frame.meta.get("m")
            why = str(frame.meta.get("why", ""))[:200]
            if type(culprit) is int and 0 <= culprit < self.size:
                self._aborts[frame.request_id] = (culprit, why)
            return
        self._inbox[(frame.request_id, step, src)] = frame.tensors.get("x")

    def cancel(self) -> None:
        """Make a collective in flight (on the thread that owns the group) fail within
        `CANCEL_CHECK_S`: the one call that is safe from another thread. Used when the
        deployment is unloaded while a step waits on a member that is gone, so the share
        is released at once instead of after the collective timeout."""
        self._cancelled.set()

    def _check_abort(self, seq: int) -> None:
        if self._cancelled.is_set():
            self._broken = "cancelled: the deployment is being unloaded"
            raise CollectiveError(f"collective #{seq} {self._broken}", member="")
        abort = self._aborts.get(seq)
        if abort is not None:
            culprit, why = abort
            self._broken = f"{self.member_name(culprit)} {why}"
            raise CollectiveError(
                f"collective #{seq} failed: {self._broken} (reported by another member)",
                member=self.member_name(culprit),
            )

    def _expect(self, seq: int, step: int, src: int, deadline: float) -> np.ndarray:
        key = (seq, step, src)
        self._waiting_on = src
        while key not in self._inbox:
            self._check_abort(seq)
            # in slices, so a cancel from another thread is seen
            if (not self._receive(min(deadline, time.monotonic() + CANCEL_CHECK_S))
                    and time.monotonic() >= deadline):
                self._find_culprit(seq, key, src)
        self._waiting_on = -1
        tensor = self._inbox.pop(key)
        if tensor is None:
            raise self._fail(src, "sent a collective message without a tensor")
        return tensor

    def _find_culprit(self, seq: int, key: tuple[int, int, int], src: int) -> None:
        """After a timeout waiting for `src`: ping it. No answer: it is the culprit.
        An answer says whom it waits on; follow that chain (bounded by the group size)
        so that a dead member is named, not the live member stuck behind it. Returns
        if the awaited message arrives meanwhile; raises CollectiveError otherwise."""
        grace = _liveness_grace(self.timeout_s)
        candidate, visited = src, {self.rank}
        while True:
            visited.add(candidate)
            self._pongs.pop(candidate, None)
            with contextlib.suppress(CollectiveError, zmq.ZMQError):
                self._send(candidate, seq, -1, None, _PING)
            probe_deadline = time.monotonic() + grace
            while candidate not in self._pongs and key not in self._inbox:
                self._check_abort(seq)
                if not self._receive(probe_deadline):
                    break
            if key in self._inbox:
                return
            self._check_abort(seq)
            if candidate not in self._pongs:
                raise self._fail(candidate, f"did not answer within {self.timeout_s:g} s")
            waiting_on = self._pongs[candidate]
            if not 0 <= waiting_on < self.size or waiting_on in visited:
                why = f"is alive but sent nothing within {self.timeout_s:g} s"
                raise self._fail(candidate, why)
            candidate = waiting_on

    def _fail(self, culprit: int, why: str) -> CollectiveError:
        """Mark the group broken, tell the other members, and build the error to raise."""
        self._broken = f"{self.member_name(culprit)} {why}"
        for other in range(self.size):
            if other != self.rank:  # the culprit too: it may be alive but misbehaving
                # best effort: a member we cannot reach will time out on its own
                with contextlib.suppress(CollectiveError, zmq.ZMQError):
                    self._send(other, self._seq, -1, None, _ABORT, {"m": culprit, "why": why})
        return CollectiveError(
            f"collective #{self._seq} on rank {self.rank} failed: {self._broken}; "
            "the group must be rebuilt",
            member=self.member_name(culprit),
        )

    def _begin(self, x: np.ndarray | None) -> tuple[int, float]:
        if self._closed:
            raise CollectiveError("the collective group is closed")
        if self._broken is not None:
            raise CollectiveError(
                f"the collective group failed earlier ({self._broken}); rebuild it"
            )
        self._seq += 1
        return self._seq, time.monotonic() + self.timeout_s

    def _check_like(self, got: np.ndarray, want: np.ndarray, src: int) -> None:
        if got.shape != want.shape or got.dtype != want.dtype:
            raise self._fail(
                src,
                f"sent {got.dtype}{list(got.shape)} where {want.dtype}{list(want.shape)} "
                "was expected (all members must pass the same shape and dtype)",
            )

    def close(self, *, keep_listener: bool = False) -> None:
        """Close every socket (a collective in flight is abandoned), the listener too
        unless `keep_listener` (to build a new group on the same bound address)."""
        if self._closed:
            return
        self._closed = True
        if self._outbox is not None:
            self._outbox.drain(time.monotonic() + 0.5)
        for socket in self._peers:
            if socket is not None:
                socket.close(linger=100)
        if self._links is not None:
            self._links.close(keep_incoming=keep_listener)
        if self._sealer is not None:
            self._sealer.close()  # the key goes with the group
        if not keep_listener:
            self._listener.close()
