"""A real `edge-runtime agent` process started through the CLI, for tests of the CLI."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from transports.keys import init_keys, trust

CLI = [sys.executable, "-m", "edge_runtime.cli.main"]
START_TIMEOUT_S = 90.0  # imports + the cached self-profile; generous on a busy 2-core machine
STOP_TIMEOUT_S = 30.0


@contextlib.contextmanager
def cli_agent(tmp_path: Path, *args: str,
              client: str = "laptop") -> Iterator[tuple[subprocess.Popen[bytes], dict[str, str]]]:
    """A CURVE agent on a free loopback port (extra CLI `args`) that trusts a fresh key pair
    named `client`. Yields the process and its ready-file JSON plus `agent_keys` and
    `client_keys` (directories); SIGTERM on exit (SIGKILL if that does not end it)."""
    from devices.cache import profile

    profile()  # measured once and cached, so the agent starts quickly
    agent_keys, client_keys = tmp_path / "agent-keys", tmp_path / client
    init_keys(agent_keys)
    trust(agent_keys, init_keys(client_keys).public, client)
    ready, log_path = tmp_path / "ready.json", tmp_path / "agent.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [*CLI, "agent", "--listen", "tcp://127.0.0.1:0", *args, "--keys", str(agent_keys),
             "--cache-dir", str(tmp_path / "cache"), "--ready-file", str(ready)],
            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not ready.exists():
                assert process.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "agent did not start"
                time.sleep(0.05)
            info = json.loads(ready.read_text())
            info.update(agent_keys=str(agent_keys), client_keys=str(client_keys))
            yield process, info
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
