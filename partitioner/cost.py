"""The cost model: how long a node takes on a device, and a tensor on a link.

Compute model (per node, additive, so a segment's time is a prefix-sum difference)::

    t(node, device) = max(flops / (gflops_fp32·1e9 · efficiency[op_class]),
                          bytes_touched / (mem_bandwidth_gbps·1e9)) + node_overhead_s

a roofline per node: arithmetic at the device's measured matmul rate scaled by how
well the op class reaches that rate, or streaming its weights and output through
memory, whichever is slower; plus a fixed dispatch cost per node. Each stage adds
`stage_overhead_s` (one `InferenceSession.run` call and the runtime's bookkeeping).
The defaults were calibrated on the development machine with `edge-runtime bench
plan` (predicted vs measured stage latency; see docs/benchmarks/plan.md).

Link model: one hop costs rtt/2 + bytes / bandwidth (the pipeline sends each
activation once, agent to agent). A pair with no measured `LinkProfile` uses the
documented default link below.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from partitioner.graph import ModelGraph

log = logging.getLogger(__name__)

#: A pair of devices without a measured link is assumed to share a typical home
#: Wi-Fi/100 Mbit LAN: 2 ms round trip, 12.5 MB/s.
DEFAULT_LINK_RTT_S = 0.002
DEFAULT_LINK_BANDWIDTH_BPS = 12.5e6


class DeviceLike(Protocol):
    """The fields of `devices.DeviceProfile` the planner reads."""

    @property
    def name(self) -> str: ...
    @property
    def gflops_fp32(self) -> float: ...
    @property
    def mem_available_bytes(self) -> int: ...
    @property
    def mem_bandwidth_gbps(self) -> float: ...


class LinkLike(Protocol):
    """The fields of `devices.LinkProfile` the planner reads."""

    @property
    def src(self) -> str: ...
    @property
    def dst(self) -> str: ...
    @property
    def rtt_s(self) -> float: ...
    @property
    def bandwidth_bytes_per_s(self) -> float: ...


def _default_efficiency() -> dict[str, float]:
    return {"matmul": 0.9, "conv": 1.0, "elementwise": 0.1, "movement": 1.0, "control": 0.5}


@dataclass(frozen=True)
class CostModel:
    """Constants of the compute model (see the module docstring)."""

    efficiency: Mapping[str, float] = field(default_factory=_default_efficiency)
    node_overhead_s: float = 6e-6
    stage_overhead_s: float = 6e-5

    def node_times(self, graph: ModelGraph, device: DeviceLike) -> np.ndarray:
        """Predicted seconds of every node of `graph` on `device` (array of N)."""
        rate = max(device.gflops_fp32, 1e-6) * 1e9
        bandwidth = max(device.mem_bandwidth_gbps, 1e-6) * 1e9
        times = np.empty(len(graph.nodes), dtype=np.float64)
        for i, node in enumerate(graph.nodes):
            eff = self.efficiency.get(node.op_class, 0.3)
            arithmetic = node.flops / (rate * eff)
            memory = (node.param_bytes + node.output_bytes) / bandwidth
            times[i] = max(arithmetic, memory) + self.node_overhead_s
        return times

    def segment_time(self, graph: ModelGraph, device: DeviceLike, start: int, end: int) -> float:
        return float(self.node_times(graph, device)[start:end].sum()) + self.stage_overhead_s


DEFAULT_COST_MODEL = CostModel()


class Links:
    """Link lookup by device name; symmetric fallback, then the default link."""

    def __init__(self, links: Iterable[LinkLike] | Mapping[tuple[str, str], LinkLike] = ()) -> None:
        values = links.values() if isinstance(links, Mapping) else links
        self._table: dict[tuple[str, str], tuple[float, float]] = {}
        for link in values:
            self._table[(link.src, link.dst)] = (link.rtt_s, link.bandwidth_bytes_per_s)

    def params(self, src: str, dst: str) -> tuple[float, float]:
        """(rtt_s, bandwidth bytes/s) from `src` to `dst`."""
        found = self._table.get((src, dst)) or self._table.get((dst, src))
        return found if found else (DEFAULT_LINK_RTT_S, DEFAULT_LINK_BANDWIDTH_BPS)

    def transfer_time(self, src: str, dst: str, nbytes: float) -> float:
        """rtt/2 + bytes/bandwidth between two distinct devices (callers skip same-device hops)."""
        rtt, bandwidth = self.params(src, dst)
        return rtt / 2.0 + float(nbytes) / max(bandwidth, 1.0)
