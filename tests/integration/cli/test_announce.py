"""`edge-runtime agent --announce`: a real agent process announces itself over mDNS.

mDNS runs on real zeroconf sockets bound to 127.0.0.1 (the agent listens there,
so it announces there only): nothing leaves this machine. A coordinator that
browses finds the agent's endpoint and public key, and `connect` uses that key
only once it is in the coordinator's trusted-keys directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import edge_runtime as er
from edge_runtime.agent.startup import announce_target, mdns_instance_name
from edge_runtime.discovery import AgentAddress, browse, zeroconf_available
from edge_runtime.errors import ConfigError
from support.cli_agent import cli_agent
from transports.errors import SecurityError
from transports.keys import generate_keypair, init_keys, trust

LOOPBACK = ["127.0.0.1"]
BROWSE_S = 1.5


def _multicast_on_loopback() -> str | None:
    """None if mDNS sockets can be opened on 127.0.0.1, else why not."""
    if not zeroconf_available():
        return "zeroconf is not installed"
    import zeroconf

    try:
        zc = zeroconf.Zeroconf(interfaces=LOOPBACK, ip_version=zeroconf.IPVersion.V4Only)
    except OSError as error:
        return f"multicast is unavailable on loopback here: {error}"
    zc.close()
    return None


def test_announce_target_follows_the_listen_address() -> None:
    assert announce_target("tcp://0.0.0.0:7700") == (7700, None)
    assert announce_target("tcp://127.0.0.1:41234") == (41234, ["127.0.0.1"])
    with pytest.raises(ConfigError, match="IPv4 listen address"):
        announce_target("tcp://[::1]:7700")
    with pytest.raises(ConfigError, match="tcp://"):
        announce_target("ipc:///tmp/agent")
    assert mdns_instance_name("pi.kitchen.lan") == "pi-kitchen-lan"
    assert len(mdns_instance_name("x" * 100).encode()) == 63


def test_untrusted_or_contradicted_announced_key_is_refused(tmp_path: Path) -> None:
    # No agent needed: the key is checked before any socket is opened.
    init_keys(tmp_path / "coordinator")
    announced = generate_keypair().public.decode()
    agent = AgentAddress("tcp://127.0.0.1:7799", "spoofed",
                         {"public_key": announced, "preset": "", "version": "0.1.0"})
    with pytest.raises(SecurityError, match=r"not trusted here .*edge-runtime keys trust"):
        er.connect([agent], keys=tmp_path / "coordinator")
    # A different key already trusted for that address: the announcement contradicts it.
    trust(tmp_path / "coordinator", generate_keypair().public, "old", "tcp://127.0.0.1:7799")
    trust(tmp_path / "coordinator", announced, "new")
    with pytest.raises(SecurityError, match="different key is trusted for that address"):
        er.connect([agent], keys=tmp_path / "coordinator")


@pytest.fixture
def announced_agent(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, str]]]:
    why = _multicast_on_loopback()
    if why is not None:
        pytest.skip(why)
    name = f"announce-test-{os.getpid()}"
    with cli_agent(tmp_path, "--name", name, "--announce", client="coordinator") as (
            process, info):
        info["coordinator_keys"] = info["client_keys"]
        yield process, info


@pytest.mark.slow  # a real agent process plus two mDNS browse windows: ~8 s here
def test_announced_agent_is_found_and_trusted_only_explicitly(
    announced_agent: tuple[subprocess.Popen[bytes], dict[str, str]],
) -> None:
    process, info = announced_agent
    assert info["mdns_name"] == info["name"]
    found = {a.name: a for a in browse(timeout_s=BROWSE_S, interfaces=LOOPBACK)}
    assert info["mdns_name"] in found, f"not announced; browse saw {sorted(found)}"
    agent = found[info["mdns_name"]]
    assert agent.endpoint == info["address"]
    assert agent.properties["public_key"] == info["public_key"]
    assert agent.properties["name"] == info["name"]
    assert agent.properties["version"] == er.__version__

    keys = info["coordinator_keys"]
    # Found is not trusted: mDNS must not bypass the trusted-keys directory.
    with pytest.raises(SecurityError, match="edge-runtime keys trust"):
        er.connect([agent], keys=keys)
    trust(keys, info["public_key"], "announced")  # what `edge-runtime keys trust` does
    with er.connect([agent], keys=keys) as cluster:
        assert cluster.agents[0].public_key == info["public_key"]
        assert cluster.status()[cluster.agents[0].name]["available"]

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0
    # The agent withdrew its announcement on SIGTERM (mDNS goodbye).
    names = {a.name for a in browse(timeout_s=BROWSE_S, interfaces=LOOPBACK)}
    assert info["mdns_name"] not in names
