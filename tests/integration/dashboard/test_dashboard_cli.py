"""`edge-runtime dashboard --local 2` as a real process: state and metrics over HTTP,
behind its key, and a clean stop on SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

CLI = [sys.executable, "-m", "edge_runtime.cli.main"]
KEY = "dash-key"


def get(url: str, key: str | None) -> tuple[int, bytes]:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_dashboard_command_over_local_agents(tmp_path: Path) -> None:
    log_path = tmp_path / "dashboard.log"
    env = {**os.environ, "EDGE_RUNTIME_API_KEY": KEY}
    with log_path.open("w") as log:
        process = subprocess.Popen([*CLI, "dashboard", "--local", "2", "--port", "0"],
                                   stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=env)
        try:
            deadline = time.monotonic() + 120
            while not (found := re.search(r"dashboard at (http://\S+?)/dashboard",
                                          log_path.read_text())):
                assert process.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
            url = found.group(1)
            assert get(f"{url}/dashboard/state", None)[0] == 401
            status, body = get(f"{url}/dashboard/state", KEY)
            assert status == 200
            state = json.loads(body)
            assert [a["name"] for a in state["agents"]] == ["agent0", "agent1"]
            assert state["chat"] is False and state["rates"] is None
            status, page = get(f"{url}/dashboard", None)
            assert status == 200 and b"<script src=\"/dashboard/assets/dashboard.js\"" in page
            assert get(f"{url}/dashboard/assets/dashboard.js", None)[0] == 200
            assert get(f"{url}/dashboard/assets/secret.txt", None)[0] == 404
            assert get(f"{url}/metrics", None)[0] == 401
            status, text = get(f"{url}/metrics", KEY)
            up = {s.labels["agent"]: s.value
                  for family in text_string_to_metric_families(text.decode())
                  for s in family.samples if s.name == "edge_runtime_agent_up"}
            assert up == {"agent0": 1.0, "agent1": 1.0}
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0, log_path.read_text()
