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
  (encode/decode, syscalls, the I/O thread's hand-off: tens of µs in this Python
  runtime; `MESSAGE_OVERHEAD_S` when unmeasured). It is what makes a star beat a
  one-hop all-to-all for small tensors: both take two hops, but the hub handles
  2(n-1) messages and an all-to-all member 4(n-1); and it is what makes recursive
  doubling (log2 n hops of one message each way) beat both for small tensors once n
  grows.

The model ignores the time to sum (memory-bound, far below network time).
"""

from __future__ import annotations

from collections.abc import Sequence

Matrix = Sequence[Sequence[float]]

MESSAGE_OVERHEAD_S = 30e-6
"""Per-message software cost when none was measured. Measured on the 16-core host
(one core per member, 8 KB): a star allreduce of 8 members took 460 µs plain and
595 µs with CURVE while a round trip took 82 / 117 µs, i.e. 2 hops plus the hub's 14
messages at ≈ 27 µs (plain) to ≈ 34 µs (CURVE) each."""

SOFTWARE_BYTES_PER_S = 1e9
"""Bytes per second one member moves through this runtime's own per-byte work (encode,
seal with an AEAD, copy, sum), whatever the link: a link's measured bandwidth is capped
at this when a schedule is chosen. Measured on the 16-core host: a sealed 1 MB
all-to-all allreduce of 8 members (each sends and receives 7 × 128 KB twice) took
4.8 ms, ≈ 0.75-1 GB/s per member; without it, a loopback probe's several GB/s made
recursive doubling look best for a 1 MB prefill at 4 members, where all-to-all was
measured 2.4x faster."""

ALGORITHMS = ("star", "ring", "all_to_all", "recursive_doubling")
"""Allreduce algorithms the model prices, in tie-break order."""


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


def recursive_doubling_time(
    nbytes: float, latency_s: Matrix, bandwidth: Matrix, overhead_s: float = 0.0
) -> float:
    """log2(p) rounds (p = the largest power of two ≤ n) in which member r swaps the whole
    partial sum with member r XOR 2^k: one message out and one in per round. With n not
    a power of two, members p.. first fold into members 0.. and get the result last;
    the members with nothing to fold go ahead meanwhile, so the fold and the unfold add
    one hop to the critical path, not two (measured: n = 3 takes 2 hops, like a star)."""
    n = _check(latency_s, bandwidth)
    if n == 1:
        return 0.0
    p = 1 << (n.bit_length() - 1)
    total = 0.0
    if p < n:  # fold in (member r to r - p) or the result back out (r - p to r)
        total += max(max(latency_s[r][r - p] + nbytes / bandwidth[r][r - p],
                         latency_s[r - p][r] + nbytes / bandwidth[r - p][r])
                     for r in range(p, n)) + 2 * overhead_s
    distance = 1
    while distance < p:
        total += max(latency_s[r][r ^ distance] + nbytes / bandwidth[r][r ^ distance]
                     for r in range(p)) + 2 * overhead_s
        distance <<= 1
    return total


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


def hop_time(nbytes: float, latency_s: float, bandwidth: float,
             overhead_s: float = 0.0) -> float:
    """One message of `nbytes` from one member to another (a pipeline's activation hop):
    the link's one-way latency, the bytes at its bandwidth, and the message's software
    cost at both ends."""
    if latency_s < 0 or bandwidth <= 0:
        raise ValueError("a hop needs latency ≥ 0 and bandwidth > 0")
    return latency_s + nbytes / bandwidth + 2 * overhead_s


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
    """The fastest allreduce for these links: (a name of `ALGORITHMS`, predicted seconds,
    hub for star else None). Ties prefer star, then ring, all-to-all, recursive doubling.
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
        ("recursive_doubling",
         recursive_doubling_time(nbytes, latency_s, bandwidth, overhead_s), None),
    ]
    name, seconds, best = min(options, key=lambda o: o[1])
    return name, seconds, best


def allreduce_time(
    algorithm: str, nbytes: float, hub: int, latency_s: Matrix, bandwidth: Matrix,
    overhead_s: float = 0.0,
) -> float:
    """Predicted seconds of one allreduce by the named algorithm (`hub`: the star's)."""
    if algorithm == "star":
        return star_allreduce_time(nbytes, hub, latency_s, bandwidth, overhead_s)
    if algorithm == "ring":
        return ring_allreduce_time(nbytes, latency_s, bandwidth, overhead_s)
    if algorithm == "all_to_all":
        return all_to_all_time(nbytes, latency_s, bandwidth, overhead_s)
    if algorithm == "recursive_doubling":
        return recursive_doubling_time(nbytes, latency_s, bandwidth, overhead_s)
    raise ValueError(f"unknown allreduce algorithm {algorithm!r}; use star, ring, "
                     "all_to_all or recursive_doubling")


Schedule = tuple[tuple[int, str], ...]
"""(largest payload in bytes, algorithm) in ascending payload order; see `schedule`."""


def allreduce_schedule(
    payload_sizes: Sequence[int], latency_s: Matrix, bandwidth: Matrix,
    overhead_s: float = MESSAGE_OVERHEAD_S,
    software_bytes_per_s: float | None = SOFTWARE_BYTES_PER_S,
) -> Schedule:
    """The best algorithm at each payload size, as ranges: ((upto_bytes, name), ...).

    A payload up to the first bound uses the first name, and so on; one above the last
    bound uses the last name (`pick`). Neighbouring sizes with the same best algorithm
    are merged, so a plan records a few ranges, not every size. Each link's bandwidth
    is capped at `software_bytes_per_s` (None: uncapped)."""
    if not payload_sizes:
        raise ValueError("no payload sizes to choose algorithms for")
    if software_bytes_per_s is not None:
        cap = software_bytes_per_s
        bandwidth = [[min(b, cap) for b in row] for row in bandwidth]
    ranges: list[tuple[int, str]] = []
    for size in sorted(set(int(s) for s in payload_sizes)):
        name = best_allreduce(size, latency_s, bandwidth, overhead_s)[0]
        if ranges and ranges[-1][1] == name:
            ranges[-1] = (size, name)
        else:
            ranges.append((size, name))
    return tuple(ranges)


def pick(schedule: Schedule, nbytes: int, default: str = "star") -> str:
    """The algorithm `schedule` names for a payload of `nbytes` (`default` if empty)."""
    for upto, name in schedule:
        if nbytes <= upto:
            return name
    return schedule[-1][1] if schedule else default


def uniform(
    n: int, latency_s: float, bandwidth: float
) -> tuple[list[list[float]], list[list[float]]]:
    """(latency, bandwidth) matrices for n members on identical links (diagonal unused)."""
    lat = [[0.0 if i == j else latency_s for j in range(n)] for i in range(n)]
    bw = [[float("inf") if i == j else bandwidth for j in range(n)] for i in range(n)]
    return lat, bw
