"""The collectives' cost model (hand-computed cases) and the link emulator's schedule."""

from __future__ import annotations

import pytest

from transports.cost import (
    all_to_all_time,
    allreduce_schedule,
    best_allreduce,
    best_hub,
    broadcast_time,
    gather_time,
    pick,
    recursive_doubling_time,
    ring_allreduce_time,
    star_allreduce_time,
    uniform,
)
from transports.linkemu import LinkEmulator, LinkSpec, Outbox

MB = 1e6


def test_star_on_uniform_links_is_two_hops_plus_serialised_bytes() -> None:
    lat, bw = uniform(4, 0.002, 10 * MB)
    # in: 2 ms + 3 × 1 MB / 10 MB/s; out: the same
    assert star_allreduce_time(1 * MB, 0, lat, bw) == pytest.approx(2 * (0.002 + 0.3))
    # the hub handles 6 messages of 1 ms each
    assert star_allreduce_time(1 * MB, 0, lat, bw, overhead_s=0.001) == pytest.approx(0.610)


def test_ring_and_all_to_all_on_uniform_links() -> None:
    lat, bw = uniform(4, 0.002, 10 * MB)
    # 2(n-1) = 6 steps of (2 ms + 0.25 MB / 10 MB/s)
    assert ring_allreduce_time(1 * MB, lat, bw) == pytest.approx(6 * (0.002 + 0.025))
    # 2 steps of (2 ms + 3 × 0.25 MB / 10 MB/s)
    assert all_to_all_time(1 * MB, lat, bw) == pytest.approx(2 * (0.002 + 0.075))
    # with 1 ms per message: ring steps handle 2 messages, all-to-all steps 6
    assert ring_allreduce_time(1 * MB, lat, bw, 0.001) == pytest.approx(6 * (0.002 + 0.025 + 0.002))
    assert all_to_all_time(1 * MB, lat, bw, 0.001) == pytest.approx(2 * (0.002 + 0.075 + 0.006))


def test_small_messages_favour_few_messages_per_member_big_ones_favour_chunks() -> None:
    lat, bw = uniform(8, 50e-6, 1e9)  # loopback-like links, 30 µs per message
    # 3 hops of one message each way beat 2 hops plus the hub's 14 messages
    assert best_allreduce(4096, lat, bw, overhead_s=30e-6)[0] == "recursive_doubling"
    # on slow-latency links the star's 2 hops beat recursive doubling's 3
    far_lat, far_bw = uniform(8, 5e-3, 1e9)
    assert best_allreduce(4096, far_lat, far_bw, overhead_s=30e-6)[0] == "star"
    # big tensors: the hub's link would carry (n-1)× the bytes, so star loses
    assert best_allreduce(64 * MB, lat, bw, overhead_s=30e-6)[0] in ("ring", "all_to_all")
    # on the same links, a ring beats star for big tensors, and loses for small ones
    for nbytes, ring_wins in ((64 * MB, True), (4096, False)):
        ring = ring_allreduce_time(nbytes, lat, bw, 30e-6)
        assert (ring < star_allreduce_time(nbytes, 0, lat, bw, 30e-6)) is ring_wins


def test_best_hub_is_the_member_with_the_lowest_summed_latency() -> None:
    lat = [
        [0.0, 0.010, 0.010],
        [0.010, 0.0, 0.001],
        [0.010, 0.001, 0.0],
    ]
    assert best_hub(lat) == 1  # ties between 1 and 2 go to the lower rank
    bw = [[1e6, 1e6, 1e6], [1e6, 1e6, 1e8], [1e6, 1e8, 1e6]]
    # the fast 1<->2 link makes 1 (or 2) the better hub: 0 has only slow links
    assert star_allreduce_time(1000, 0, lat, bw) > star_allreduce_time(1000, 1, lat, bw)
    name, seconds, hub = best_allreduce(1000, lat, bw, overhead_s=1e-3)
    # every algorithm must cross member 0's slow links; recursive doubling crosses them
    # twice with one message each (fold 2 -> 0, then 0 <-> 1), the star twice plus the
    # hub's 4 messages, so it wins here by the star's extra message costs
    assert name == "recursive_doubling" and hub is None
    assert seconds == pytest.approx(recursive_doubling_time(1000, lat, bw, 1e-3))
    assert seconds < star_allreduce_time(1000, 1, lat, bw, 1e-3)


def test_broadcast_gather_and_single_member_groups() -> None:
    lat, bw = uniform(3, 0.001, 1 * MB)
    assert broadcast_time(1 * MB, 0, lat, bw) == pytest.approx(0.001 + 2.0)
    assert gather_time(1 * MB, 2, lat, bw) == pytest.approx(0.001 + 2.0)
    one_lat, one_bw = uniform(1, 0.001, 1 * MB)
    assert star_allreduce_time(1 * MB, 0, one_lat, one_bw) == 0.0
    assert ring_allreduce_time(1 * MB, one_lat, one_bw) == 0.0
    assert all_to_all_time(1 * MB, one_lat, one_bw) == 0.0


@pytest.mark.parametrize(
    ("lat", "bw"),
    [([], []), ([[0.0, 1.0]], [[1.0, 1.0]]), ([[0.0, -1.0], [1.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]])],
)
def test_malformed_matrices_are_refused(lat: list[list[float]], bw: list[list[float]]) -> None:
    with pytest.raises(ValueError):
        ring_allreduce_time(10, lat, bw)


class FakeClock:
    """Deterministic time for the emulator's schedule (the emulator takes a clock)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_wifi_preset() -> None:
    wifi = LinkSpec.wifi()
    assert 2 * wifi.delay_s == pytest.approx(0.005)
    assert wifi.bandwidth_bytes_per_s == pytest.approx(50e6 / 8)
    assert wifi.transfer_time(625_000) == pytest.approx(0.0025 + 0.1)


@pytest.mark.parametrize("shared_uplink", [True, False])
def test_schedule_serialises_messages_and_keeps_their_order(shared_uplink: bool) -> None:
    clock = FakeClock()
    emulator = LinkEmulator(default=LinkSpec(delay_s=0.01, bandwidth_bytes_per_s=1000.0),
                            clock=clock, shared_uplink=shared_uplink)
    first = emulator.schedule("a", 100)  # 0.1 s on the wire + 10 ms
    second = emulator.schedule("a", 100)  # waits for the first to leave the link
    other = emulator.schedule("b", 100)  # one radio: after both; separate links: at once
    assert first == pytest.approx(100.11)
    assert second == pytest.approx(100.21)
    assert other == pytest.approx(100.31 if shared_uplink else 100.11)


def test_jitter_never_reorders_messages() -> None:
    emulator = LinkEmulator(default=LinkSpec(delay_s=0.001, jitter_s=0.05), seed=3,
                            clock=FakeClock())
    dues = [emulator.schedule("a", 10) for _ in range(200)]
    assert all(d is not None for d in dues)
    assert dues == sorted(dues)  # type: ignore[type-var]


def test_loss_and_disconnect_windows_drop_messages() -> None:
    clock = FakeClock()
    lossy = LinkEmulator(default=LinkSpec(loss=0.3), seed=1, clock=clock)
    dropped = sum(lossy.schedule("a", 1) is None for _ in range(2000))
    assert 500 < dropped < 700 and lossy.dropped == dropped
    windowed = LinkEmulator({"a": LinkSpec(disconnect_windows=((1.0, 2.0),))}, clock=clock)
    assert windowed.schedule("a", 1) is not None
    clock.now += 1.5
    assert windowed.schedule("a", 1) is None
    assert windowed.schedule("b", 1) is not None  # only the link to "a" is down
    clock.now += 1.0
    assert windowed.schedule("a", 1) is not None


def test_outbox_sends_in_due_order() -> None:
    clock = FakeClock()
    outbox = Outbox(clock)
    sent: list[str] = []
    outbox.push(100.2, lambda: sent.append("late"))
    outbox.push(100.1, lambda: sent.append("early"))
    outbox.flush()
    assert sent == [] and outbox.poll_timeout(101.0) == pytest.approx(0.1)
    clock.now = 100.15
    outbox.flush()
    assert sent == ["early"]
    clock.now = 100.3
    outbox.flush()
    assert sent == ["early", "late"] and len(outbox) == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"delay_s": -1},
        {"bandwidth_bytes_per_s": 0},
        {"loss": 1.5},
        {"disconnect_windows": ((2, 1),)},
    ],
)
def test_bad_link_specs_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        LinkSpec(**kwargs)  # type: ignore[arg-type]


def test_recursive_doubling_takes_log2_rounds_and_one_more_hop_off_powers_of_two() -> None:
    lat, bw = uniform(8, 0.002, 10 * MB)
    # 3 rounds of (2 ms + 1 MB / 10 MB/s), 2 messages handled per round
    assert recursive_doubling_time(1 * MB, lat, bw) == pytest.approx(3 * (0.002 + 0.1))
    assert recursive_doubling_time(1 * MB, lat, bw, 0.001) == pytest.approx(3 * 0.104)
    lat6, bw6 = uniform(6, 0.002, 10 * MB)
    assert recursive_doubling_time(1 * MB, lat6, bw6) == pytest.approx(3 * (0.002 + 0.1))
    one_lat, one_bw = uniform(1, 0.002, 10 * MB)
    assert recursive_doubling_time(1 * MB, one_lat, one_bw) == 0.0


def test_a_schedule_names_the_best_algorithm_per_payload_range() -> None:
    lat, bw = uniform(8, 50e-6, 1e9)
    sizes = [8192 * 2**k for k in range(10)]  # 8 KB .. 4 MB
    schedule = allreduce_schedule(sizes, lat, bw, 30e-6)
    assert [name for _, name in schedule] == ["recursive_doubling", "all_to_all"]
    for size in sizes:  # the ranges agree with best_allreduce at every size
        assert pick(schedule, size) == best_allreduce(size, lat, bw, 30e-6)[0]
    assert pick(schedule, 1) == "recursive_doubling"
    assert pick(schedule, 10**12) == "all_to_all"  # past the last bound: the last name
    assert pick((), 4096) == "star"
    with pytest.raises(ValueError):
        allreduce_schedule([], lat, bw)
