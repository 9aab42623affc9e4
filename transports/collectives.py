"""Collectives over a fixed group of members: allreduce (star, ring, one-hop
all-to-all, recursive doubling), broadcast, gather, barrier.

Built for persistent agents that call an allreduce about twice per transformer
layer per token: sockets are set up once (each member binds one ROUTER for
everything it receives and keeps one DEALER to every other member), and a call
costs one msgpack header per message plus the tensor bytes, sent zero-copy.

Rules every member follows (SPMD): all members call the same collectives in the
same order with tensors of the same shape and dtype. Each call gets a sequence
number; messages are matched by (sequence, step, source), so members of any
speed may run ahead and out-of-order arrivals are buffered.

Messaging, matching and failure detection live in `transports.group`: a member
that does not deliver within `timeout_s` fails the call on every live member with
a `CollectiveError` naming it.

Sums are computed in float32 for floating inputs (int64 for integers), and the
result has the input's dtype and is bitwise the same on every member (star, ring and
all-to-all add in rank order; recursive doubling adds pairwise, and a + b == b + a
holds exactly in IEEE arithmetic, so both partners of a pair hold the same bits).
Results may be read-only views on received buffers.

Which algorithm is fastest depends on the group size, the payload and the links:
`transports.cost` predicts each one's time from measured latency, bandwidth and
per-message cost, and `allreduce(x, algorithm)` runs the one chosen.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import zmq

from transports.errors import CollectiveError
from transports.group import DEFAULT_TIMEOUT_S
from transports.grouplistener import GroupListener
from transports.reduced import ReducedAllreduce

__all__ = ["ALLREDUCE_ALGORITHMS", "DEFAULT_TIMEOUT_S", "CollectiveGroup", "GroupListener"]

ALLREDUCE_ALGORITHMS = ("star", "ring", "all_to_all", "recursive_doubling")
"""The names `CollectiveGroup.allreduce` takes, as `transports.cost.best_allreduce` names them."""

log = logging.getLogger(__name__)


def _accumulator_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    if dtype.kind in "iu":
        return np.dtype(np.int64)
    if dtype.kind == "f" or dtype.name == "bfloat16":
        return np.dtype(np.float32)
    raise CollectiveError(f"cannot sum tensors of dtype {dtype}; use a float or integer dtype")


class CollectiveGroup(ReducedAllreduce):
    """Member `rank` of a collective group (see `GroupMember` for the constructor:
    rank, endpoints, security, timeout_s, peer_keys, listener, context, emulation,
    compression, max_message_bytes, seal_keys, cipher, spin_us, sync)."""

    def allreduce(self, x: np.ndarray, algorithm: str = "star", hub: int = 0) -> np.ndarray:
        """Sum of every member's `x` with the named algorithm (`ALLREDUCE_ALGORITHMS`);
        `hub` is used by the star only. Every member must name the same algorithm.

        With a reduced `sync` format (bf16, fp16, q8), float32 tensors travel in it
        (`transports.reduced`; the same result bits on every member); other dtypes, and
        every call of the named methods below, stay exact."""
        if algorithm not in ALLREDUCE_ALGORITHMS:
            raise CollectiveError(f"unknown allreduce algorithm {algorithm!r}; use one of "
                                  f"{', '.join(ALLREDUCE_ALGORITHMS)}")
        if self.sync != "fp32" and self.size > 1 and np.asarray(x).dtype == np.float32:
            return self.reduced_allreduce(x, algorithm, hub)
        if algorithm == "star":
            return self.star_allreduce(x, hub)
        if algorithm == "recursive_doubling":
            return self.recursive_doubling_allreduce(x)
        if algorithm == "all_to_all":
            return self.all_to_all_allreduce(x)
        return self.ring_allreduce(x)

    def star_allreduce(self, x: np.ndarray, hub: int = 0) -> np.ndarray:
        """Sum of every member's `x`: members send to `hub`, which sums and sends back."""
        x = np.asarray(x)
        seq, deadline = self._begin(x)
        acc_dtype = _accumulator_dtype(x.dtype)
        if self.size == 1:
            return x.copy()
        if not 0 <= hub < self.size:
            raise CollectiveError(f"hub {hub} is outside a group of {self.size} members")
        if self.rank != hub:
            self._send(hub, seq, 0, x)
            result = self._expect(seq, 1, hub, deadline)
            self._check_like(result, x, hub)
            return result
        acc: np.ndarray | None = None
        first: np.ndarray | None = None
        for src in range(self.size):  # in rank order, so every run sums alike
            part = x if src == hub else self._expect(seq, 0, src, deadline)
            if src != hub:
                self._check_like(part, x, src)
            if first is None:
                first = part
            elif acc is None:  # one pass into a fresh accumulator, no cast copy first
                acc = np.add(first, part, out=np.empty(x.shape, acc_dtype), dtype=acc_dtype)
            else:
                acc += part
        assert acc is not None
        result = acc.astype(x.dtype, copy=False)
        # big frames leave zero-copy after we return: send a buffer the caller cannot touch
        sent = result if result.nbytes < zmq.COPY_THRESHOLD else result.copy()
        self._send_all([dst for dst in range(self.size) if dst != hub], seq, 1, sent)
        return result

    def ring_allreduce(self, x: np.ndarray) -> np.ndarray:
        """Sum via reduce-scatter then all-gather around the ring rank → rank+1.

        Partial sums travel in the accumulator dtype (float32/int64), final chunks
        in the input dtype."""
        x = np.asarray(x)
        seq, deadline = self._begin(x)
        acc = np.array(x, dtype=_accumulator_dtype(x.dtype), copy=True).reshape(-1)
        n = self.size
        if n == 1:
            return acc.astype(x.dtype).reshape(x.shape)
        chunks = np.array_split(acc, n)
        right, left = (self.rank + 1) % n, (self.rank - 1) % n
        for k in range(n - 1):  # reduce-scatter: chunk (rank-k) leaves, (rank-k-1) arrives
            self._send(right, seq, k, chunks[(self.rank - k) % n].copy())  # partial sums
            index = (self.rank - k - 1) % n
            part = self._expect(seq, k, left, deadline)
            if part.shape != chunks[index].shape:
                raise self._fail(left, "sent a chunk of the wrong size (shapes differ)")
            chunks[index] += part
        for k in range(n - 1):  # all-gather: each member owns chunk (rank+1) reduced
            self._send(right, seq, n - 1 + k, chunks[(self.rank + 1 - k) % n].astype(x.dtype))
            index = (self.rank - k) % n
            part = self._expect(seq, n - 1 + k, left, deadline)
            if part.shape != chunks[index].shape:
                raise self._fail(left, "sent a chunk of the wrong size (shapes differ)")
            chunks[index][...] = part
        return acc.astype(x.dtype).reshape(x.shape)

    def all_to_all_allreduce(self, x: np.ndarray) -> np.ndarray:
        """Sum in two hops: member j reduces chunk j from everyone, then sends it to all."""
        x = np.asarray(x)
        seq, deadline = self._begin(x)
        acc_dtype = _accumulator_dtype(x.dtype)
        n = self.size
        if n == 1:
            return x.copy()
        chunks = np.array_split(np.ascontiguousarray(x).reshape(-1), n)
        for dst in range(n):
            if dst != self.rank:
                self._send(dst, seq, 0, chunks[dst])
        own: np.ndarray | None = None
        for src in range(n):
            part = chunks[self.rank] if src == self.rank else self._expect(seq, 0, src, deadline)
            if part.shape != chunks[self.rank].shape or part.dtype != x.dtype:
                raise self._fail(src, "sent a chunk of the wrong size or dtype")
            if own is None:
                own = part.astype(acc_dtype, copy=True)
            else:
                own += part
        assert own is not None
        reduced = own.astype(x.dtype, copy=False)
        self._send_all([dst for dst in range(n) if dst != self.rank], seq, 1, reduced)
        pieces = [
            reduced if src == self.rank else self._expect(seq, 1, src, deadline)
            for src in range(n)
        ]
        for src, piece in enumerate(pieces):
            if piece.shape != chunks[src].shape:
                raise self._fail(src, "sent a reduced chunk of the wrong size")
        return np.concatenate(pieces).reshape(x.shape)

    def recursive_doubling_allreduce(self, x: np.ndarray) -> np.ndarray:
        """Sum in log2(n) exchanges: in round k, member r swaps its partial sum with
        member r XOR 2^k and adds. Every member sends and receives one message per round,
        so no member handles 2(n-1) messages as a star's hub does; for a small tensor
        this is about log2(n) hops of one message each instead of 2 hops plus the hub's
        2(n-1) messages one after another.

        n not a power of two: the p = 2^floor(log2 n) first members run the rounds;
        member p+i first folds its `x` into member i's and gets the result from it last.
        Partial sums travel in the accumulator dtype (float32 for floats)."""
        x = np.asarray(x)
        seq, deadline = self._begin(x)
        acc_dtype = _accumulator_dtype(x.dtype)
        n, rank = self.size, self.rank
        if n == 1:
            return x.copy()
        p = 1 << (n.bit_length() - 1)
        last = p.bit_length()  # the step of the unfold message (rounds use 1..log2 p)
        if rank >= p:  # an extra member: fold in, wait for the result
            self._send(rank - p, seq, 0, x)
            result = self._expect(seq, last, rank - p, deadline)
            self._check_like(result, x, rank - p)
            return result
        if rank + p < n:
            extra = self._expect(seq, 0, rank + p, deadline)
            self._check_like(extra, x, rank + p)
            acc = np.add(x, extra, dtype=acc_dtype)
        elif x.dtype == acc_dtype:
            # sent zero-copy when large: a buffer the caller cannot change under us
            acc = x if x.nbytes < zmq.COPY_THRESHOLD else x.copy()
        else:
            acc = x.astype(acc_dtype)
        distance, step = 1, 1
        while distance < p:
            partner = rank ^ distance
            self._send(partner, seq, step, acc)
            part = self._expect(seq, step, partner, deadline)
            if part.shape != acc.shape or part.dtype != acc.dtype:
                raise self._fail(partner, f"sent {part.dtype}{list(part.shape)} where "
                                 f"{acc.dtype}{list(acc.shape)} was expected")
            acc = np.add(acc, part)  # a fresh array: the one just sent may still be in flight
            distance, step = distance << 1, step + 1
        summed: np.ndarray = acc.astype(x.dtype, copy=False)
        if rank + p < n:  # the caller may write into `summed` while this is in flight
            self._send(rank + p, seq, last,
                       summed if summed.nbytes < zmq.COPY_THRESHOLD else summed.copy())
        return summed

    def broadcast(self, x: np.ndarray | None, root: int = 0) -> np.ndarray:
        """`root`'s `x` on every member (others may pass None)."""
        seq, deadline = self._begin(x)
        if self.rank == root:
            if x is None:
                raise CollectiveError(f"broadcast root {root} must pass a tensor")
            data = np.array(x, copy=True)  # the caller may reuse x while it is in flight
            self._send_all([dst for dst in range(self.size) if dst != root], seq, 0, data)
            return np.asarray(x)
        return self._expect(seq, 0, root, deadline)

    def gather(self, x: np.ndarray, root: int = 0) -> list[np.ndarray] | None:
        """Every member's `x`, in rank order, on `root`; None on the others."""
        seq, deadline = self._begin(x)
        if self.rank != root:
            self._send(root, seq, 0, np.array(x, copy=True))
            return None
        return [
            np.asarray(x) if src == root else self._expect(seq, 0, src, deadline)
            for src in range(self.size)
        ]

    def barrier(self) -> None:
        """Return once every member has reached the barrier."""
        self.star_allreduce(np.zeros(1, np.int8), hub=0)

    def __enter__(self) -> CollectiveGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
