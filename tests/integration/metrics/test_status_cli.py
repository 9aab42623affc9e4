"""`edge-runtime status` as a real process: a local cluster, a named agent, a dead one."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from support.cli_agent import cli_agent
from transports.keys import trust

CLI = [sys.executable, "-m", "edge_runtime.cli.main"]


def trusted_address(info: dict[str, str]) -> str:
    """The agent's host:port, its key trusted for that address in the client's keys."""
    trust(info["client_keys"], info["public_key"], "agent", address=info["address"])
    return info["address"].removeprefix("tcp://")


def status(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "status", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_status_lists_every_agent_of_a_local_cluster() -> None:
    done = status("--local", "3", "--presets", "raspberry-pi-4,jetson-orin-nano,phone",
                  "--links")
    assert done.returncode == 0, done.stderr
    table, links = done.stdout.split("\n\n")[:2]
    lines = table.splitlines()
    assert lines[0].startswith("3 of 3 agent(s) answering")
    assert lines[1].split()[:4] == ["AGENT", "HEALTH", "MEMORY", "USED/BUDGET"]
    rows = {line.split()[0]: line for line in lines[2:] if line.strip()}
    assert set(rows) == {"agent0-raspberry-pi-4", "agent1-jetson-orin-nano", "agent2-phone"}
    assert all(" up " in row for row in rows.values())
    assert "raspberry-pi-4 (emulated)" in rows["agent0-raspberry-pi-4"]
    assert " ms " in rows["agent2-phone"]  # its round trip
    link_rows = links.splitlines()
    assert link_rows[0].split() == ["LINK", "RTT", "BANDWIDTH"]
    assert len(link_rows) == 4 and all("MB/s" in row for row in link_rows[1:])


def test_status_of_agents_by_address_with_json_and_a_dead_one(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"
    with cli_agent(tmp_path, "--name", "kitchen") as (_, info):
        address = trusted_address(info)
        done = status(address, "--keys", info["client_keys"], "--json")
        assert done.returncode == 0, done.stderr
        (agent,) = json.loads(done.stdout)["agents"]
        assert agent["name"] == "kitchen" and agent["available"] is True
        assert agent["rtt_s"] > 0 and agent["requests_served"] >= 1
        # `--insecure` with a dead address: that agent is shown, and the exit status says so
        done = status(f"{dead}", "--insecure", "--timeout-s", "0.5")
        assert done.returncode == 1
        assert "0 of 1 agent(s) answering" in done.stdout
        assert "unreachable: no connection" in done.stdout


def test_status_watch_redraws(tmp_path: Path) -> None:
    with cli_agent(tmp_path, "--name", "watched") as (_, info):
        address = trusted_address(info)
        done = status(address, "--keys", info["client_keys"], "--watch", "--interval",
                      "0.2", "--count", "3")
        assert done.returncode == 0, done.stderr
        tables = [line for line in done.stdout.splitlines() if "agent(s) answering" in line]
        assert len(tables) == 3
        lines = done.stdout.splitlines()
        column = lines[1].index("REQS")  # the table's columns are aligned
        requests = [int(line[column:].split()[0]) for line in lines
                    if line.startswith("watched")]
        assert requests == sorted(requests) and requests[-1] > requests[0]
