"""A traced generation over three real agents with a streaming window: every agent's
compute, collective waits and disk reads, lined up on one clock."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import edge_runtime as er
from edge_runtime.trace import COORDINATOR, to_chrome

CHECKPOINT = Path(__file__).resolve().parents[3] / "examples" / "tinylm" / "checkpoint"
# the 32 MiB activation reserve + KV cache + about half a megabyte of weights in RAM:
# a share larger than that streams its weights through the window
STREAMING_BUDGET = "34.5MB"


def test_a_traced_generation_lines_up_across_agents(cluster: er.LocalCluster) -> None:
    llm = cluster.deploy_llm(CHECKPOINT, memory_budget=STREAMING_BUDGET, max_context=64)
    try:
        untraced = llm.generate("Permission is", max_new_tokens=3)
        with llm.tracing() as capture:
            generation = llm.generate("Permission is", max_new_tokens=5)
        assert generation.token_ids[:3] == untraced.token_ids  # tracing changes nothing
        streaming = {name for name, st in llm.status().items()
                     if not st["window"].get("resident", True)}
    finally:
        llm.unload()
    trace = capture.trace
    assert trace is not None
    agents = set(llm.agents)
    assert set(trace.devices) == {COORDINATOR, *agents}
    steps = {s.request_id: s for s in trace.on(COORDINATOR, "request")}
    assert len(steps) == 5  # one per token of the decode run, the prompt's step first
    slack = max(s.error_s for s in trace.offsets.values()) * 2 + 2e-3
    sent = min(s.start for s in steps.values())  # the run's one request left
    waits: dict[tuple[int, str], list] = defaultdict(list)
    for span in trace.spans:
        if span.device == COORDINATOR:
            continue
        if span.lane in ("disk", "window"):
            continue  # the window reads ahead between steps too
        step = steps[span.request_id]
        # the agents run ahead: step i starts when the hub broadcasts token i-1, which
        # may be before that token's answer reaches the coordinator (where its span
        # starts); on one clock it begins after the run was sent and ends before token
        # i's answer arrived
        assert sent - slack <= span.start and span.end <= step.end + slack, span
        if span.lane == "allreduce":
            waits[(span.request_id, span.device)].append(span)
    for request_id in steps:
        for name in agents:
            lanes = {s.lane for s in trace.on(name) if s.request_id == request_id}
            assert {"queue", "compute", "allreduce"} <= lanes, (name, lanes)
        counts = {len(waits[(request_id, n)]) for n in agents}
        assert len(counts) == 1  # every member took part in every collective
        # in an allreduce nobody gets the sum before the last member has sent its part:
        # on one clock, every wait ends after every member's wait began (the last
        # collective of a step gathers logits to the hub: members do not wait for it)
        for j in range(counts.pop() - 1):
            began = max(waits[(request_id, n)][j].start for n in agents)
            ended = min(waits[(request_id, n)][j].end for n in agents)
            assert ended >= began - slack, (request_id, j, (began - ended) * 1e3)
    reads = [s for s in trace.spans if s.lane == "disk"]
    assert streaming and {s.device for s in reads} == streaming  # who streams reads disk
    assert all(s.nbytes > 0 and s.name.startswith("read ") for s in reads)
    data = json.loads(json.dumps(to_chrome(trace)))
    assert sum(1 for e in data["traceEvents"] if e["ph"] == "X") == len(trace.spans)
