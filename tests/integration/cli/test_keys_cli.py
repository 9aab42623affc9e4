"""`edge-runtime keys` in a real shell, and the address forms and agent names a
newcomer meets first, against a real agent process."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import edge_runtime as er
from devices import system
from edge_runtime.agent.config import AgentConfig
from edge_runtime.agent.startup import default_agent_name
from edge_runtime.cli.main import main
from edge_runtime.sdk.config import DEFAULT_TIMEOUTS
from support.cli_agent import CLI, cli_agent
from transports.errors import SecurityError
from transports.keys import (
    init_keys,
    key_fingerprint,
    load_keypair,
    server_key_for,
    trust,
    trusted_keys,
)

PIPE_BUFFER = 64 * 1024  # Linux's default pipe capacity


def test_show_piped_into_head_exits_quietly(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    pair = init_keys(keys)
    for index in range(1500):  # ~100 kB of output: more than the pipe holds, so it breaks
        trust(keys, pair.public, f"peer-{index:04d}", address=f"10.0.{index // 250}.{index % 250}")
    command = shlex.join([*CLI, "keys", "--dir", str(keys), "show"])
    full = subprocess.run([*CLI, "keys", "--dir", str(keys), "show"], capture_output=True,
                          text=True, check=True, timeout=60)
    assert len(full.stdout) > PIPE_BUFFER
    piped = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {command} | head -1"],
        capture_output=True, text=True, timeout=60)
    assert piped.stdout.startswith("public key: " + pair.public.decode())
    assert piped.stderr == "", piped.stderr
    assert piped.returncode == 141  # as `yes | head` under pipefail: SIGPIPE's status


def test_the_trust_command_show_prints_pastes_into_a_shell(tmp_path: Path) -> None:
    agent, laptop = tmp_path / "agent", tmp_path / "laptop"
    pair = init_keys(agent)
    init_keys(laptop)
    shown = subprocess.run([*CLI, "keys", "--dir", str(agent), "show"], capture_output=True,
                           text=True, check=True, timeout=60).stdout
    assert f"(fingerprint {key_fingerprint(pair.public)})" in shown
    [command] = [line.strip() for line in shown.splitlines()
                 if line.strip().startswith("edge-runtime keys trust")]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    # pasted as printed; only the keys directory of this test is put in front
    pasted = command.replace("keys trust", f"keys --dir {shlex.quote(str(laptop))} trust", 1)
    subprocess.run(["bash", "-c", pasted], env=env, check=True, timeout=60)
    [peer] = trusted_keys(laptop).values()
    assert peer.public == pair.public and peer.address == "tcp://HOST:7700"


def test_trust_accepts_every_address_form_the_cli_accepts(tmp_path: Path) -> None:
    key = init_keys(tmp_path / "agent").public.decode()
    laptop = tmp_path / "laptop"
    for name, address in (("a", "10.0.0.2"), ("b", "10.0.0.3:7711"), ("c", "tcp://pi.local:7702")):
        assert main(["keys", "--dir", str(laptop), "trust", "--name", name,
                     "--address", address, "--", key]) == 0
    assert {k.address for k in trusted_keys(laptop).values()} == {
        "tcp://10.0.0.2:7700", "tcp://10.0.0.3:7711", "tcp://pi.local:7702"}
    assert server_key_for(laptop, "10.0.0.3:7711").decode() == key


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A real CURVE agent on a free loopback port, started with no --name."""
    with cli_agent(tmp_path) as (_, info):
        yield info


@pytest.mark.timeout(120)
def test_connect_with_a_bare_host_port_and_a_unique_default_name(agent: dict[str, str]) -> None:
    expected = f"{system.host_name()}-{key_fingerprint(load_keypair(agent['agent_keys']).public)}"
    assert agent["name"] == expected
    bare = agent["address"].removeprefix("tcp://")  # 127.0.0.1:PORT, as --connect takes it
    laptop = agent["client_keys"]
    assert main(["keys", "--dir", laptop, "trust", "--name", "pi",
                 "--address", bare, "--", agent["public_key"]]) == 0
    with er.connect([bare], keys=laptop) as cluster:
        assert [info.name for info in cluster.agents] == [expected]
    # insecure against a CURVE agent: said at once, never a hang
    started = time.monotonic()
    with pytest.raises(SecurityError, match="one side runs --insecure"):
        er.connect([bare], insecure=True)
    assert time.monotonic() - started < DEFAULT_TIMEOUTS.hello_s


def test_default_agent_names_tell_same_named_hosts_apart(tmp_path: Path) -> None:
    first, second = init_keys(tmp_path / "a"), init_keys(tmp_path / "b")
    names = [default_agent_name("raspberrypi", AgentConfig(keys_dir=tmp_path / d)) for d in "ab"]
    assert names == [f"raspberrypi-{key_fingerprint(first.public)}",
                     f"raspberrypi-{key_fingerprint(second.public)}"]
    insecure = {default_agent_name("raspberrypi", AgentConfig(insecure=True)) for _ in range(5)}
    assert len(insecure) == 5
    assert all(re.fullmatch(r"raspberrypi-[0-9a-f]{6}", name) for name in insecure)
