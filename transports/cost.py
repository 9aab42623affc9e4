"""Predicted time of each collective: α·hops + bytes/β over measured links.

Pure functions over plain floats, so `partitioner/` can choose a collective and
a hub from measured `LinkProfile`s without importing sockets. Conventions:

- `latency_s[i][j]`: one-way latency from member i to member j in seconds
  (half a measured round trip); `bandwidth[i][j]`: bytes/s from i to j.
- A member sends its messages one after another on one link interface, so the
  bytes a member sends in one step add up (serialisation), while the latency of
  parallel messages does not.
- A step ends when its slowest member is done; steps run one after another.

- `overhead_s` is the software cost of one message a member sends or receives
  (encode/decode, syscalls: tens of µs in this Python runtime). It is what makes a
  star beat a one-hop all-to-all for small tensors: both take two hops, but the
  hub handles 2(n-1) messages and an all-to-all member 4(n-1).

The model ignores the time to sum (memory-bound, far below network time).
"""

from __future__ import annotations

from collections.abc import Sequence

Matrix = Sequence[Sequence[float]]


def _check(latency_s: Matrix, bandwidth: Matrix) -> int:
    n = len(latency_s)
    if n == 0 or len(bandwidth) != n:
        raise ValueError("latency and bandwidth must be non-empty n×n matrices of the same n")
    for row_l, row_b in zip(latency_s, bandwidth, strict=True):
        if len(row_l) != n or len(row_b) != n:
            raise ValueError("latency and bandwidth must be square n×n matrices")
    for i in range(n):
        for j in range(n):
            if i != j and (latency_s[i][j] < 0 or bandwidth[i][j] <= 0):
                raise ValueError(f"link {i}->{j}: latency must be ≥ 0 and bandwidth > 0")
    return n


def _fan_in(
    nbytes: float, hub: int, latency_s: Matrix, bandwidth: Matrix, per_msg: float
) -> float:
    """Everyone sends `nbytes` to `hub`; the hub receives the messages one by one."""
    others = [m for m in range(len(latency_s)) if m != hub]
    if not others:
        return 0.0
    return max(latency_s[m][hub] for m in others) + sum(
        per_msg + nbytes / bandwidth[m][hub] for m in others
    )


def _fan_out(
    nbytes: float, root: int, latency_s: Matrix, bandwidth: Matrix, per_msg: float
) -> float:
    """`root` sends `nbytes` to everyone, one message after another."""
    others = [m for m in range(len(latency_s)) if m != root]
    if not others:
        return 0.0
    return max(latency_s[root][m] for m in others) + sum(
        per_msg + nbytes / bandwidth[root][m] for m in others
    )


def star_allreduce_time(
    nbytes: float, hub: int, latency_s: Matrix, bandwidth: Matrix, overhead_s: float = 0.0
) -> float:
    """Members send `nbytes` to `hub` (2 hops in all), the hub sums and sends the result
    back; the hub handles 2(n-1) messages."""
    n = _check(latency_s, bandwidth)
    if not 0 <= hub < n:
        raise ValueError(f"hub {hub} is outside a group of {n}")
    return _fan_in(nbytes, hub, latency_s, bandwidth, overhead_s) + _fan_out(
        nbytes, hub, latency_s, bandwidth, overhead_s
    )


def ring_allreduce_time(
    nbytes: float, latency_s: Matrix, bandwidth: Matrix, overhead_s: float = 0.0
) -> float:
    """Reduce-scatter + all-gather around rank order: 2(n-1) steps, each sending and
    receiving one chunk of nbytes/n per member."""
    n = _check(latency_s, bandwidth)
    if n == 1:
        return 0.0
    chunk = nbytes / n
    step = max(latency_s[i][(i + 1) % n] + chunk / bandwidth[i][(i + 1) % n] for i in range(n))
    return 2 * (n - 1) * (step + 2 * overhead_s)


def all_to_all_time(
    nbytes: float, latency_s: Matrix, bandwidth: Matrix, overhead_s: float = 0.0
) -> float:
    """One-hop allreduce: each member sends chunk j to member j, then its reduced chunk
    to all: 2 hops, but each member handles 4(n-1) messages."""
    n = _check(latency_s, bandwidth)
    if n == 1:
        return 0.0
    chunk = nbytes / n
    step = max(
        max(latency_s[i][j] for j in range(n) if j != i)
        + sum(chunk / bandwidth[i][j] for j in range(n) if j != i)
        + 2 * (n - 1) * overhead_s
        for i in range(n)
    )
    return 2 * step


def broadcast_time(
    nbytes: float, root: int, latency_s: Matrix, bandwidth: Matrix, overhead_s: float = 0.0
) -> float:
    """`root` sends `nbytes` to every other member."""
    n = _check(latency_s, bandwidth)
    if not 0 <= root < n:
        raise ValueError(f"root {root} is outside a group of {n}")
    return _fan_out(nbytes, root, latency_s, bandwidth, overhead_s)


def gather_time(
    nbytes: float, root: int, latency_s: Matrix, bandwidth: Matrix, overhead_s: float = 0.0
) -> float:
    """Every member sends `nbytes` to `root`."""
    n = _check(latency_s, bandwidth)
    if not 0 <= root < n:
        raise ValueError(f"root {root} is outside a group of {n}")
    return _fan_in(nbytes, root, latency_s, bandwidth, overhead_s)


def best_hub(latency_s: Matrix) -> int:
    """The member with the lowest summed latency to and from all others (ties: lowest rank)."""
    n = len(latency_s)
    if n == 0:
        raise ValueError("an empty group has no hub")
    totals = [
        sum(latency_s[i][j] + latency_s[j][i] for j in range(n) if j != i) for i in range(n)
    ]
    return min(range(n), key=lambda i: (totals[i], i))


def best_allreduce(
    nbytes: float, latency_s: Matrix, bandwidth: Matrix, overhead_s: float = 0.0
) -> tuple[str, float, int | None]:
    """The fastest allreduce for these links: (``"star"``/``"ring"``/``"all_to_all"``,
    predicted seconds, hub for star else None). Ties prefer star, then ring.
    Use a measured `overhead_s` (see module docstring); 0 ignores message costs."""
    n = _check(latency_s, bandwidth)
    hub = min(
        range(n),
        key=lambda h: (star_allreduce_time(nbytes, h, latency_s, bandwidth, overhead_s), h),
    )
    options = [
        ("star", star_allreduce_time(nbytes, hub, latency_s, bandwidth, overhead_s), hub),
        ("ring", ring_allreduce_time(nbytes, latency_s, bandwidth, overhead_s), None),
        ("all_to_all", all_to_all_time(nbytes, latency_s, bandwidth, overhead_s), None),
    ]
    name, seconds, best = min(options, key=lambda o: o[1])
    return name, seconds, best


def uniform(
    n: int, latency_s: float, bandwidth: float
) -> tuple[list[list[float]], list[list[float]]]:
    """(latency, bandwidth) matrices for n members on identical links (diagonal unused)."""
    lat = [[0.0 if i == j else latency_s for j in range(n)] for i in range(n)]
    bw = [[float("inf") if i == j else bandwidth for j in range(n)] for i in range(n)]
    return lat, bw
