"""The plan's allreduce choice from measured links (pure; no agents needed).

One noisy probe must not decide the algorithm: loopback pairs of one host get the
host's median figures, so the choice follows the typical link, not the unlucky one."""

from __future__ import annotations

from edge_runtime.sdk.llm_plan import allreduce_payloads, robust_matrices
from transports.cost import MESSAGE_OVERHEAD_S, allreduce_schedule, pick


def test_one_slow_probe_on_a_host_does_not_change_the_choice() -> None:
    hosts = ["10.0.0.1"] * 8
    probes = [(i, j, 150e-6, 7e8) for i in range(8) for j in range(i + 1, 8)]
    noisy = [(i, j, 2e-3, 1.4e8) if (i, j) == (0, 2) else (i, j, r, b)
             for i, j, r, b in probes]
    payloads = allreduce_payloads(2048, 512)
    clean = allreduce_schedule(payloads, *robust_matrices(hosts, probes), MESSAGE_OVERHEAD_S)
    assert allreduce_schedule(payloads, *robust_matrices(hosts, noisy),
                              MESSAGE_OVERHEAD_S) == clean
    assert pick(clean, 8192) == "recursive_doubling"  # decode: 8 members, 8 KB
    assert pick(clean, 4 * 2048 * 512) == "all_to_all"  # a whole-context prefill


def test_other_hosts_keep_their_own_figures_and_gaps_get_the_median() -> None:
    hosts = ["a", "a", "b"]
    latency, bandwidth = robust_matrices(hosts, [(0, 1, 100e-6, 1e9), (1, 2, 4e-3, 1e7),
                                                 (2, 1, 5e-3, 2e7)])
    assert latency[0][1] == latency[1][0] == 50e-6
    assert latency[1][2] == 2e-3 and bandwidth[2][1] == 2e7  # the better of both ways
    assert latency[0][2] == latency[2][0] > 0  # not measured: the median pair
    assert payloads_ok()


def payloads_ok() -> bool:
    sizes = allreduce_payloads(2048, 48, 2)
    return sizes[0] == 8192 and sizes[-1] == 4 * 2048 * 96 and sizes == sorted(sizes)
