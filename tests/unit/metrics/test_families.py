"""Status maps into Prometheus text that a real parser reads back, and plan lanes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from edge_runtime.dashboard.state import plan_lanes
from edge_runtime.metrics.counters import WireCounters
from edge_runtime.metrics.families import status_families, wire_families
from edge_runtime.metrics.snapshot import agent_from_status

LLM_ROW = {
    "type": "llm-shard", "rank": 0, "ready": True, "memory_bytes": 5_000_000,
    "share": {"kv_heads": [0, 1], "mlp_columns": [0, 96], "vocab_rows": [0, 100],
              "weight_bytes": 4_000_000},
    "window": {"blocks": 4, "resident": False, "budget_bytes": 2_000_000, "loads": 10,
               "bytes_read": 9_000_000, "load_seconds": 0.5, "wait_seconds": 0.1,
               "uses": 14, "peak_loaded_bytes": 1_500_000},
    "steps": 7, "tokens": 9, "compute_s": 0.25, "comm_s": 0.125, "load_s": 0.3,
    "rss_bytes": 60_000_000,
}
STAGE_ROW = {"type": "onnx-stage", "stage": 1, "n_stages": 3, "memory_bytes": 1000,
             "queued": 2, "served": 5, "busy_s": 0.5}


def status(name: str, deployments: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "address": "tcp://127.0.0.1:1", "emulated": False, "preset": None,
            "uptime_s": 12.5, "memory_budget": 8_000_000, "memory_used": 6_000,
            "requests_served": 42, "errors_answered": 3, "deployments": deployments}


class Fixed:
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


def scrape(families: list[Metric]) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Render through prometheus_client and parse back: sample name -> labels -> value."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed(families))
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = \
                sample.value
    return found


def test_status_families_parse_with_every_named_series() -> None:
    found = scrape(list(status_families([
        status("a", {"llm-1": LLM_ROW}), status("b", {"p-1": STAGE_ROW})])))
    a = (("agent", "a"),)
    assert found["edge_runtime_agent_memory_used_bytes"][a] == 6000
    assert found["edge_runtime_agent_memory_budget_bytes"][a] == 8_000_000
    assert found["edge_runtime_agent_requests_total"][a] == 42
    assert found["edge_runtime_agent_errors_total"][a] == 3
    llm = (("agent", "a"), ("deployment", "llm-1"), ("type", "llm-shard"))
    assert found["edge_runtime_allreduce_seconds_total"][llm] == 0.125
    assert found["edge_runtime_window_loads_total"][llm] == 10
    assert found["edge_runtime_window_hits_total"][llm] == 4  # uses - loads
    assert found["edge_runtime_resident_weight_bytes"][llm] == 1_500_000  # streaming
    assert found["edge_runtime_window_budget_bytes"][llm] == 2_000_000
    assert found["edge_runtime_llm_tokens_total"][llm] == 9
    stage = (("agent", "b"), ("deployment", "p-1"), ("type", "onnx-stage"))
    assert found["edge_runtime_stage_queue_depth"][stage] == 2
    assert found["edge_runtime_stage_served_total"][stage] == 5
    assert llm not in found["edge_runtime_stage_queue_depth"]  # no field, no series


def test_a_resident_share_holds_its_whole_weight() -> None:
    row = {**LLM_ROW, "window": {**LLM_ROW["window"], "resident": True}}
    found = scrape(list(status_families([status("a", {"llm-1": row})])))
    llm = (("agent", "a"), ("deployment", "llm-1"), ("type", "llm-shard"))
    assert found["edge_runtime_resident_weight_bytes"][llm] == 4_000_000


def test_wire_families_parse_including_the_histogram() -> None:
    wire = WireCounters()
    wire.request("status", 0.003)
    wire.request("status", 0.2)
    wire.error("deploy", "MemoryBudgetError")
    wire.sent(b"coordinator-9", 1234)
    wire.received(b"coordinator-9", 99)
    found = scrape(list(wire_families("a", wire)))
    assert found["edge_runtime_agent_messages_total"][(("agent", "a"), ("kind", "status"))] == 2
    assert found["edge_runtime_agent_message_errors_total"][
        (("agent", "a"), ("kind", "deploy"), ("type", "MemoryBudgetError"))] == 1
    buckets = found["edge_runtime_agent_handle_seconds_bucket"]
    assert buckets[(("agent", "a"), ("kind", "status"), ("le", "0.005"))] == 1
    assert buckets[(("agent", "a"), ("kind", "status"), ("le", "+Inf"))] == 2
    assert found["edge_runtime_agent_handle_seconds_count"][
        (("agent", "a"), ("kind", "status"))] == 2
    peer = (("agent", "a"), ("peer", "coordinator-9"))
    assert found["edge_runtime_agent_bytes_sent_total"][peer] == 1234
    assert found["edge_runtime_agent_bytes_received_total"][peer] == 99


def test_plan_lanes_scale_each_dimension_to_the_largest_end() -> None:
    second = {**LLM_ROW, "rank": 1,
              "share": {"kv_heads": [1, 2], "mlp_columns": [96, 160], "vocab_rows": [100, 200],
                        "weight_bytes": 1}}
    agents = [agent_from_status(status("a", {"llm-1": LLM_ROW, "p-1": STAGE_ROW}),
                                health="up"),
              agent_from_status(status("b", {"llm-1": second}), health="up")]
    lanes = {entry["id"]: entry for entry in plan_lanes(agents)}
    llm = lanes["llm-1"]
    assert llm["totals"] == {"kv_heads": 2, "mlp_columns": 160, "vocab_rows": 200}
    assert [lane["agent"] for lane in llm["lanes"]] == ["a", "b"]
    assert llm["lanes"][1]["ranges"]["mlp_columns"] == [96, 160]
    assert [d["key"] for d in llm["dimensions"]] == ["kv_heads", "mlp_columns", "vocab_rows"]
    assert lanes["p-1"]["lanes"][0]["detail"] == "stage 2/3"
    assert agents[0].deployments[0].detail == "rank 0: kv heads 0, mlp cols 0-95, vocab 0-99"
