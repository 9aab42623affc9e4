"""`edge-runtime agent --metrics-port`: a real agent process scraped over HTTP.

The agent is started through the CLI; a coordinator in this process deploys the
committed tinylm checkpoint on it (its files are sent, chunk by chunk) and generates a
few tokens. Before and after, `/metrics` is fetched with a plain HTTP client and
parsed by prometheus_client's own parser: the series named in the issue exist and the
ones that count what happened moved by what happened.
"""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

import edge_runtime as er
from edge_runtime.sdk.llm_files import SEND_TASK
from edge_runtime.sdk.progress import ProgressEvent
from support.cli_agent import cli_agent

ROOT = Path(__file__).parents[3]
TINYLM = ROOT / "examples" / "tinylm" / "checkpoint"
Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = \
                sample.value
    return found


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of `name`'s samples whose labels include `labels`."""
    return sum(value for key, value in samples.get(name, {}).items()
               if all((k, v) in key for k, v in labels.items()))


def metrics_url(log: Path, timeout_s: float = 60.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = re.search(r"metrics at (http://\S+)", log.read_text())
        if found:
            return found.group(1)
        time.sleep(0.05)
    raise AssertionError(f"the agent never printed its metrics URL:\n{log.read_text()}")


def test_agent_metrics_move_with_requests(tmp_path: Path) -> None:
    with cli_agent(tmp_path, "--metrics-port", "0", "--name", "metered") as (_, info):
        url = metrics_url(tmp_path / "agent.log")
        assert url.startswith("http://127.0.0.1:")  # loopback unless told
        before = scrape(url)
        agent = (("agent", "metered"),)
        assert before["edge_runtime_agent_uptime_seconds"][agent] > 0
        assert total(before, "edge_runtime_llm_tokens_total") == 0
        with er.connect([info["address"]], keys=info["client_keys"],
                        server_keys=[info["public_key"]]) as cluster:
            events: list[ProgressEvent] = []
            llm = cluster.deploy_llm(TINYLM, max_context=64, progress=events.append)
            # the files were sent: typed progress, ending with the whole size (the
            # agent's conversion follows: tests/integration/llm/test_deploy_progress.py)
            assert events and all(e.agent == "metered" for e in events)
            sent = [e for e in events if e.task == SEND_TASK]
            assert sent[-1].finished and sent[-1].done == sent[-1].total
            assert sent[-1].total >= TINYLM.joinpath("model.safetensors").stat().st_size
            assert [e.done for e in sent] == sorted(e.done for e in sent)
            llm.generate("Permission is", max_new_tokens=5)
            after = scrape(url)
            deployment = {"agent": "metered", "deployment": llm.id}
            # requests and errors by kind, handling time, bytes per peer
            assert total(after, "edge_runtime_agent_messages_total", kind="hello") >= 1
            assert total(after, "edge_runtime_agent_messages_total", kind="llm_put") >= 1
            assert total(after, "edge_runtime_agent_requests_total") > \
                total(before, "edge_runtime_agent_requests_total")
            assert total(after, "edge_runtime_agent_handle_seconds_count", kind="hello") >= 1
            received = total(after, "edge_runtime_agent_bytes_received_total")
            assert received > TINYLM.joinpath("model.safetensors").stat().st_size
            assert total(after, "edge_runtime_agent_bytes_sent_total") > 0
            # the LLM share: steps, allreduce time, window loads and uses, memory
            assert total(after, "edge_runtime_llm_tokens_total", **deployment) >= 5
            assert total(after, "edge_runtime_llm_steps_total", **deployment) >= 5
            assert ("edge_runtime_allreduce_seconds_total" in after
                    and total(after, "edge_runtime_allreduce_seconds_total", **deployment) >= 0)
            assert total(after, "edge_runtime_window_loads_total", **deployment) > 0
            assert total(after, "edge_runtime_window_uses_total", **deployment) > \
                total(after, "edge_runtime_window_loads_total", **deployment)
            assert total(after, "edge_runtime_resident_weight_bytes", **deployment) > 0
            assert total(after, "edge_runtime_agent_memory_used_bytes") > 0
            steps = total(after, "edge_runtime_llm_steps_total", **deployment)
            llm.generate("The Software", max_new_tokens=3)
            assert total(scrape(url), "edge_runtime_llm_steps_total", **deployment) > steps
