"""The server's `/metrics` and `/dashboard/state` over real HTTP, on real agents.

A local cluster of two agents serves tinylm through `create_app` (with a monitor of
the agents) on uvicorn in a thread. `/metrics` is scraped with urllib and parsed by
prometheus_client: HTTP requests, tokens, time to first token, the queue and KV slots,
and every agent's series are there, and the counters move with the requests made.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import edge_runtime as er
from edge_runtime.metrics import ClusterMonitor
from edge_runtime.metrics.monitor import DEFAULT_MAX_AGE_S
from edge_runtime.sdk.scheduler import GenerationScheduler
from edge_runtime.serve import ServedModel, create_app
from edge_runtime.serve.server import background

ROOT = Path(__file__).parents[3]
TINYLM = ROOT / "examples" / "tinylm" / "checkpoint"
KEY = "metrics-key"
Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, str]]:
    with er.local_cluster(2, log_level="WARNING") as cluster:
        llm = cluster.deploy_llm(TINYLM, max_context=128, max_batch=2)
        model = ServedModel.of(llm, None)
        scheduler = GenerationScheduler(llm).start()
        with ClusterMonitor.of_cluster(cluster) as monitor:
            app = create_app(scheduler, model, api_key=KEY, monitor=monitor)
            try:
                with background(app) as url:
                    yield url, model.name
            finally:
                scheduler.close(cancel=True)


def get(url: str, key: str | None = KEY) -> tuple[int, bytes]:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def complete(url: str, model: str, prompt: str, n: int) -> dict[str, Any]:
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": n}).encode()
    request = urllib.request.Request(f"{url}/v1/completions", data=body, headers={
        "Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def scrape(url: str) -> Samples:
    status, body = get(f"{url}/metrics")
    assert status == 200
    found: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = \
                sample.value
    return found


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(value for key, value in samples.get(name, {}).items()
               if all((k, v) in key for k, v in labels.items()))


def test_metrics_need_the_api_key(server: tuple[str, str]) -> None:
    url, _ = server
    assert get(f"{url}/metrics", key=None)[0] == 401
    assert get(f"{url}/metrics", key="wrong")[0] == 401
    assert get(f"{url}/dashboard/state", key=None)[0] == 401


def test_server_metrics_move_with_requests(server: tuple[str, str]) -> None:
    url, model = server
    before = scrape(url)
    for prompt in ("Permission is", "The Software"):
        assert complete(url, model, prompt, 6)["usage"]["completion_tokens"] == 6
    bad = urllib.request.Request(f"{url}/v1/completions", data=b"{", headers={
        "Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(bad, timeout=30)
    time.sleep(DEFAULT_MAX_AGE_S + 0.1)  # the agents' answers are cached this long
    after = scrape(url)
    assert total(after, "edge_runtime_generated_tokens_total") == \
        total(before, "edge_runtime_generated_tokens_total") + 12
    ok = {"route": "/v1/completions", "status": "200"}
    assert total(after, "edge_runtime_http_requests_total", **ok) == \
        total(before, "edge_runtime_http_requests_total", **ok) + 2
    assert total(after, "edge_runtime_http_requests_total", route="/v1/completions",
                 status="400") >= 1
    assert total(after, "edge_runtime_api_errors_total", status="400") >= 1
    assert total(after, "edge_runtime_http_request_seconds_count",
                 route="/v1/completions") >= 3
    assert total(after, "edge_runtime_time_to_first_token_seconds_count") == \
        total(before, "edge_runtime_time_to_first_token_seconds_count") + 2
    assert total(after, "edge_runtime_generations_total", finish="length") >= 2
    assert after["edge_runtime_kv_slots"][()] == 2
    assert after["edge_runtime_kv_slots_in_use"][()] == 0
    assert after["edge_runtime_queue_depth"][()] == 0
    assert after["edge_runtime_tokens_per_second"][()] > 0
    # every agent, through the monitor: up, RTT, memory and the LLM share's counters
    agents = {dict(key)["agent"] for key in after["edge_runtime_agent_up"]}
    assert agents == {"agent0", "agent1"}
    assert all(v == 1 for v in after["edge_runtime_agent_up"].values())
    assert all(v > 0 for v in after["edge_runtime_agent_memory_used_bytes"].values())
    assert total(after, "edge_runtime_llm_tokens_total", agent="agent1") > \
        total(before, "edge_runtime_llm_tokens_total", agent="agent1")
    assert len(after["edge_runtime_allreduce_seconds_total"]) == 2


def test_dashboard_state_has_agents_plan_rates_and_timeline(server: tuple[str, str]) -> None:
    url, model = server
    complete(url, model, "Permission is", 4)
    status, body = get(f"{url}/dashboard/state")
    assert status == 200
    state = json.loads(body)
    assert state["chat"] is True and state["model"] == model
    assert [a["name"] for a in state["agents"]] == ["agent0", "agent1"]
    assert all(a["available"] and a["health"] == "up" for a in state["agents"])
    assert all(a["rtt_s"] is not None and a["rtt_s"] > 0 for a in state["agents"])
    (plan,) = state["plan"]
    assert [lane["agent"] for lane in plan["lanes"]] == ["agent0", "agent1"]
    heads = [lane["ranges"]["kv_heads"] for lane in plan["lanes"]]
    assert heads[0][0] == 0 and heads[-1][1] == plan["totals"]["kv_heads"]
    last = state["last_request"]
    assert last["endpoint"] == "completions" and len(last["token_s"]) == 4
    assert 0 < last["first_token_s"] <= last["total_s"]
    assert state["rates"]["slots"] == 2
    (link,) = state["links"]
    assert (link["source"], link["target"]) == ("agent0", "agent1")
    assert link["error"] is None and link["rtt_s"] > 0 and link["bandwidth_bytes_per_s"] > 0
    page_status, page = get(f"{url}/dashboard", key=None)  # the page holds no secret
    assert page_status == 200 and b"dashboard.js" in page
