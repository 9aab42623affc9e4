"""Link profiling: round-trip latency and bandwidth between two agents.

On edge links latency, not bandwidth, usually dominates a collective, and the
planner needs both to price a cut. The measurement is pure over a `roundtrip`
callable (send this payload, return when its echo is back), so an agent can plug
in its own framed, authenticated protocol; `zmq_roundtrip` adapts a connected
pyzmq REQ or DEALER socket whose peer echoes (see `serve_echo`).

Model: t(size) = rtt + 2 * size / bandwidth (the payload goes there and back).
rtt is the median round trip of a small payload; bandwidth comes from the
difference between the large and small payloads' medians, which cancels the
fixed per-message cost. Medians, because one scheduler hiccup must not decide.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from devices.errors import LinkMeasureError

log = logging.getLogger(__name__)

#: Small payload: measures the fixed cost of one message round trip.
SMALL_BYTES = 64
#: Large payload: big enough that transfer time dwarfs timer noise on a LAN (1 MB ~ 8 ms at 1 Gb/s).
LARGE_BYTES = 1 << 20
#: Timed round trips per payload size (after one warm-up each).
REPEATS = 7
#: How long a zmq round trip may wait for its echo before the peer counts as gone.
ECHO_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class LinkProfile:
    """Measured link from `src` to `dst`: rtt (s) and one-way bandwidth (B/s)."""

    src: str
    dst: str
    rtt_s: float
    bandwidth_bytes_per_s: float

    def transfer_seconds(self, nbytes: int) -> float:
        """Predicted one-way time to send `nbytes`: half a round trip plus the bytes."""
        return self.rtt_s / 2 + nbytes / self.bandwidth_bytes_per_s

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> LinkProfile:
        try:
            found = cls(
                src=str(data["src"]),
                dst=str(data["dst"]),
                rtt_s=float(data["rtt_s"]),
                bandwidth_bytes_per_s=float(data["bandwidth_bytes_per_s"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise LinkMeasureError(f"invalid link profile {data!r}: {error}") from error
        if found.rtt_s < 0 or found.bandwidth_bytes_per_s <= 0:
            raise LinkMeasureError(f"invalid link profile {data!r}: rtt >= 0, bandwidth > 0")
        return found


def _median_roundtrip(roundtrip: Callable[[bytes], None], payload: bytes, repeats: int) -> float:
    roundtrip(payload)  # warm-up: connection set-up, buffer growth
    times: list[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        roundtrip(payload)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_link(
    roundtrip: Callable[[bytes], None],
    src: str,
    dst: str,
    *,
    small: int = SMALL_BYTES,
    large: int = LARGE_BYTES,
    repeats: int = REPEATS,
) -> LinkProfile:
    """Measure the link behind `roundtrip` (which sends a payload and waits for its echo)."""
    if not 0 < small < large:
        raise LinkMeasureError(f"need 0 < small < large payload sizes, got {small} and {large}")
    if repeats < 1:
        raise LinkMeasureError(f"need at least one repeat, got {repeats}")
    rtt = _median_roundtrip(roundtrip, bytes(small), repeats)
    rtt_large = _median_roundtrip(roundtrip, bytes(large), repeats)
    extra = rtt_large - rtt
    if extra <= 0:
        # Noise swamped the transfer: report the bound the large payload alone gives.
        log.warning("large payload was not slower than the small one; bandwidth is a lower bound")
        extra = rtt_large
    bandwidth = 2 * (large - small) / extra
    return LinkProfile(src=src, dst=dst, rtt_s=rtt, bandwidth_bytes_per_s=bandwidth)


def zmq_roundtrip(socket: Any, timeout_s: float = ECHO_TIMEOUT_S) -> Callable[[bytes], None]:
    """A round-trip callable over a connected REQ or DEALER socket whose peer echoes.

    Raises LinkMeasureError if no echo comes within `timeout_s` or it differs in size.
    (A REQ socket that timed out is stuck in its send/recv cycle: close it after.)
    """
    import zmq

    def roundtrip(payload: bytes) -> None:
        socket.send(payload, copy=len(payload) < 65536)
        if not socket.poll(int(timeout_s * 1000), zmq.POLLIN):
            raise LinkMeasureError(
                f"no echo within {timeout_s} s; check that the peer runs "
                "an echo (devices.links.serve_echo)"
            )
        reply = socket.recv(copy=False)
        if len(reply) != len(payload):
            raise LinkMeasureError(f"echo of {len(payload)} bytes came back as {len(reply)} bytes")

    return roundtrip


def serve_echo(socket: Any, count: int | None = None, timeout_s: float = ECHO_TIMEOUT_S) -> int:
    """Echo messages on a REP or ROUTER socket: `count` of them, or until idle for timeout_s.

    Returns how many were echoed. ROUTER messages keep their identity frames.
    """
    import zmq

    echoed = 0
    while count is None or echoed < count:
        if not socket.poll(int(timeout_s * 1000), zmq.POLLIN):
            break
        frames = socket.recv_multipart(copy=False)
        socket.send_multipart(frames, copy=False)
        echoed += 1
    return echoed


def measure_zmq_link(
    socket: Any,
    src: str,
    dst: str,
    *,
    small: int = SMALL_BYTES,
    large: int = LARGE_BYTES,
    repeats: int = REPEATS,
    timeout_s: float = ECHO_TIMEOUT_S,
) -> LinkProfile:
    """`measure_link` over a connected REQ/DEALER socket whose peer runs `serve_echo`."""
    return measure_link(
        zmq_roundtrip(socket, timeout_s), src, dst, small=small, large=large, repeats=repeats
    )
