"""Allreduce with reduced-precision sync: each algorithm's messages carry float32
activations in a smaller format (`transports.syncformat`: bf16, fp16 or q8 blocks),
partial sums are added in float32, and every member ends with the same result bits.

Why apart from `transports.collectives`: the exact algorithms there send what they sum;
here every message is encoded, so agreement needs its own care, written down per
algorithm below. The rule that makes it hold: a value two members must agree on is
only ever used *as decoded from the bytes that travel*, on the sender too, and the
codec is deterministic. Without it, members' KV caches would drift apart token by token.

- star: the hub adds every member's decoded partial in rank order, encodes the sum,
  sends it, and keeps the decoding of what it sent.
- recursive doubling: in each round both partners add (decoded own) + (decoded
  partner's); a + b == b + a exactly, so both hold the same bits. A group whose size
  is not a power of two ends with one more encode-decode, so its extra members (sent
  those bytes) agree with the rest.
- all-to-all: member j adds chunk j of everyone's encoded partials, encodes the sum,
  sends it to all and keeps its decoding.
- ring: the reduce-scatter sends encoded partial sums; the owner of each reduced chunk
  encodes it once, and the all-gather forwards those bytes unchanged around the ring.
"""

from __future__ import annotations

import numpy as np

from transports.errors import CollectiveError
from transports.group import GroupMember
from transports.syncformat import decode, encode, wire_nbytes


class ReducedAllreduce(GroupMember):
    """The reduced-precision allreduces of a group member whose `sync` is not fp32."""

    def reduced_allreduce(self, x: np.ndarray, algorithm: str, hub: int = 0) -> np.ndarray:
        """Sum of every member's float32 `x` in this group's sync format (float32 out,
        the same bits on every member)."""
        x = np.asarray(x)
        if algorithm == "star":
            if not 0 <= hub < self.size:
                raise CollectiveError(f"hub {hub} is outside a group of {self.size} members")
            return self._reduced_star(x, hub)
        if algorithm == "recursive_doubling":
            return self._reduced_doubling(x)
        if algorithm == "all_to_all":
            return self._reduced_all_to_all(x)
        return self._reduced_ring(x)

    def _take_raw(self, seq: int, step: int, src: int, deadline: float,
                  count: int) -> np.ndarray:
        """The wire payload of `count` values from `src`, its size checked."""
        part = self._expect(seq, step, src, deadline)
        want = wire_nbytes(self.sync, count)
        if part.dtype != np.uint8 or part.shape != (want,):
            raise self._fail(src, f"sent {part.dtype}{list(part.shape)} where a {self.sync} "
                             f"payload of {want} bytes was expected (all members must use "
                             "the same sync format and shape)")
        return part

    def _take(self, seq: int, step: int, src: int, deadline: float, count: int) -> np.ndarray:
        return decode(self._take_raw(seq, step, src, deadline, count), self.sync, count)

    def _reduced_star(self, x: np.ndarray, hub: int) -> np.ndarray:
        seq, deadline = self._begin(x)
        flat, sync = x.reshape(-1), self.sync
        count = flat.size
        if self.rank != hub:
            self._send(hub, seq, 0, encode(flat, sync))
            return self._take(seq, 1, hub, deadline, count).reshape(x.shape)
        acc = np.empty(count, np.float32)
        for src in range(self.size):  # in rank order: every run sums alike
            part = flat if src == hub else self._take(seq, 0, src, deadline, count)
            if src == 0:
                acc[...] = part
            else:
                acc += part
        wire = encode(acc, sync)
        self._send_all([dst for dst in range(self.size) if dst != hub], seq, 1, wire)
        return decode(wire, sync, count).reshape(x.shape)

    def _reduced_doubling(self, x: np.ndarray) -> np.ndarray:
        seq, deadline = self._begin(x)
        flat, sync = x.reshape(-1), self.sync
        count, n, rank = flat.size, self.size, self.rank
        p = 1 << (n.bit_length() - 1)
        last = p.bit_length()
        if rank >= p:  # an extra member: fold in, wait for the result
            self._send(rank - p, seq, 0, encode(flat, sync))
            return self._take(seq, last, rank - p, deadline, count).reshape(x.shape)
        acc = flat.astype(np.float32, copy=True)
        if rank + p < n:
            acc += self._take(seq, 0, rank + p, deadline, count)
        distance, step = 1, 1
        while distance < p:
            partner = rank ^ distance
            wire = encode(acc, sync)
            self._send(partner, seq, step, wire)
            acc = decode(wire, sync, count)
            acc += self._take(seq, step, partner, deadline, count)
            distance, step = distance << 1, step + 1
        if n != p:  # the extra members get these bytes: everyone keeps their decoding
            wire = encode(acc, sync)
            if rank + p < n:
                self._send(rank + p, seq, last, wire)
            acc = decode(wire, sync, count)
        return acc.reshape(x.shape)

    def _reduced_all_to_all(self, x: np.ndarray) -> np.ndarray:
        seq, deadline = self._begin(x)
        sync, n, rank = self.sync, self.size, self.rank
        chunks = np.array_split(x.reshape(-1), n)
        for dst in range(n):
            if dst != rank:
                self._send(dst, seq, 0, encode(chunks[dst], sync))
        mine = chunks[rank].size
        own = np.empty(mine, np.float32)
        for src in range(n):
            part = chunks[rank] if src == rank else self._take(seq, 0, src, deadline, mine)
            if src == 0:
                own[...] = part
            else:
                own += part
        wire = encode(own, sync)
        self._send_all([dst for dst in range(n) if dst != rank], seq, 1, wire)
        pieces = [decode(wire, sync, mine) if src == rank
                  else self._take(seq, 1, src, deadline, chunks[src].size)
                  for src in range(n)]
        return np.concatenate(pieces).reshape(x.shape)

    def _reduced_ring(self, x: np.ndarray) -> np.ndarray:
        seq, deadline = self._begin(x)
        sync, n, rank = self.sync, self.size, self.rank
        acc = x.astype(np.float32, copy=True).reshape(-1)
        chunks = np.array_split(acc, n)  # views on acc
        right, left = (rank + 1) % n, (rank - 1) % n
        for k in range(n - 1):  # reduce-scatter: chunk (rank-k) leaves, (rank-k-1) arrives
            self._send(right, seq, k, encode(chunks[(rank - k) % n], sync))
            index = (rank - k - 1) % n
            chunks[index] += self._take(seq, k, left, deadline, chunks[index].size)
        owned = (rank + 1) % n  # reduced here: encode once, keep its decoding
        forward = encode(chunks[owned], sync)
        chunks[owned][...] = decode(forward, sync, chunks[owned].size)
        for k in range(n - 1):  # all-gather: forward the bytes as they came
            self._send(right, seq, n - 1 + k, forward)
            index = (rank - k) % n
            forward = self._take_raw(seq, n - 1 + k, left, deadline, chunks[index].size)
            chunks[index][...] = decode(forward, sync, chunks[index].size)
        return acc.reshape(x.shape)


__all__ = ["ReducedAllreduce"]
