"""Link measurement: recovers a known link model, and works over real ZeroMQ loopback."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import zmq

from devices import LinkMeasureError, LinkProfile, measure_link, measure_zmq_link, serve_echo


def test_recovers_rtt_and_bandwidth_of_a_known_link() -> None:
    rtt, bandwidth = 0.002, 100e6  # 2 ms, 100 MB/s

    def slow_link(payload: bytes) -> None:  # a link with exactly this cost model
        time.sleep(rtt + 2 * len(payload) / bandwidth)

    found = measure_link(slow_link, "a", "b", small=64, large=1 << 20, repeats=3)
    assert found.src == "a" and found.dst == "b"
    assert found.rtt_s == pytest.approx(rtt, rel=0.5)
    assert found.bandwidth_bytes_per_s == pytest.approx(bandwidth, rel=0.25)
    assert found.transfer_seconds(1 << 20) == pytest.approx(rtt / 2 + (1 << 20) / bandwidth, 0.3)


def test_link_profile_round_trip_and_validation() -> None:
    link = LinkProfile("a", "b", rtt_s=1.5e-4, bandwidth_bytes_per_s=1.25e9)
    assert LinkProfile.from_dict(link.to_dict()) == link
    with pytest.raises(LinkMeasureError):
        LinkProfile.from_dict({"src": "a"})
    with pytest.raises(LinkMeasureError):
        LinkProfile.from_dict({"src": "a", "dst": "b", "rtt_s": 1.0, "bandwidth_bytes_per_s": 0})


def test_bad_arguments() -> None:
    with pytest.raises(LinkMeasureError, match="small < large"):
        measure_link(lambda p: None, "a", "b", small=10, large=10)
    with pytest.raises(LinkMeasureError, match="repeat"):
        measure_link(lambda p: None, "a", "b", repeats=0)


@pytest.fixture
def context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.mark.parametrize(
    ("client_type", "server_type"), [(zmq.REQ, zmq.REP), (zmq.DEALER, zmq.ROUTER)]
)
def test_measures_a_real_zmq_loopback_link(
    context: zmq.Context[zmq.Socket[bytes]], client_type: int, server_type: int
) -> None:
    server = context.socket(server_type)
    port = server.bind_to_random_port("tcp://127.0.0.1")
    client = context.socket(client_type)
    client.connect(f"tcp://127.0.0.1:{port}")
    repeats = 5
    echoed: list[int] = []
    thread = threading.Thread(
        target=lambda: echoed.append(serve_echo(server, count=2 * (repeats + 1), timeout_s=10))
    )
    thread.start()
    link = measure_zmq_link(client, "me", "peer", large=1 << 20, repeats=repeats, timeout_s=10)
    thread.join(timeout=10)
    assert echoed == [2 * (repeats + 1)]
    # Loopback: sub-10 ms round trips and well over 50 MB/s (NOTES.md: ~0.1 ms, GB/s).
    assert 0 < link.rtt_s < 0.01
    assert link.bandwidth_bytes_per_s > 50e6


def test_no_echo_is_a_clear_error(context: zmq.Context[zmq.Socket[bytes]]) -> None:
    silent = context.socket(zmq.ROUTER)
    port = silent.bind_to_random_port("tcp://127.0.0.1")
    client = context.socket(zmq.DEALER)
    client.connect(f"tcp://127.0.0.1:{port}")
    with pytest.raises(LinkMeasureError, match="no echo within"):
        measure_zmq_link(client, "me", "peer", repeats=1, timeout_s=0.2)
