"""A collective-group member in its own process, for transports tests.

Run as ``python tests/support/transports_member.py``; stdin line 1 is a JSON config
{rank, keys: [[public, secret], ...], timeout_s, delay_s, stall_after}, stdout line 1
is {"address"}; stdin line 2 is {"endpoints"}. It then runs star, ring and all-to-all
allreduces of `member_input(rank)` (sleeping `delay_s` before each: a slow device),
prints {"results"}; if `stall_after` is set it then blocks on stdin (to be killed),
otherwise runs one more star allreduce and prints {"error", "member", "elapsed_s"}
or {"second": [...]}.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve()


def member_input(rank: int) -> np.ndarray:
    return (np.arange(37, dtype=np.float32) * (rank + 1) - rank).reshape(37)


def main() -> None:
    from transports.collectives import CollectiveGroup, GroupListener
    from transports.errors import CollectiveError
    from transports.keys import KeyPair
    from transports.security import Security

    config = json.loads(sys.stdin.readline())
    rank = config["rank"]
    keys = config["keys"]
    security = Security(keypair=KeyPair(keys[rank][0].encode(), keys[rank][1].encode()))
    listener = GroupListener(
        "tcp://127.0.0.1:0", security, peer_keys=[k[0].encode() for k in keys]
    )
    print(json.dumps({"address": listener.address}), flush=True)
    endpoints = json.loads(sys.stdin.readline())["endpoints"]
    group = CollectiveGroup(
        rank, endpoints, security, listener=listener,
        peer_keys=[k[0].encode() for k in keys], timeout_s=config["timeout_s"],
    )
    x = member_input(rank)
    results = {}
    for name, call in (
        ("star", lambda: group.star_allreduce(x, hub=len(endpoints) - 1)),
        ("ring", lambda: group.ring_allreduce(x)),
        ("a2a", lambda: group.all_to_all_allreduce(x)),
    ):
        time.sleep(config["delay_s"])
        results[name] = call().tolist()
    print(json.dumps({"results": results}), flush=True)
    if config.get("stall_after"):
        sys.stdin.readline()  # the test kills this process here
        return
    start = time.monotonic()
    try:
        second = group.star_allreduce(x, hub=0)
    except CollectiveError as error:
        print(json.dumps({"error": str(error), "member": error.member,
                          "elapsed_s": time.monotonic() - start}), flush=True)
    else:
        print(json.dumps({"second": second.tolist()}), flush=True)
    group.close()


def start_members(configs: list[dict[str, object]]) -> list[subprocess.Popen[str]]:
    """Start one member process per config and wire up their endpoints."""
    processes = [
        subprocess.Popen([sys.executable, str(SCRIPT)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
        for _ in configs
    ]
    for process, config in zip(processes, configs, strict=True):
        assert process.stdin is not None
        process.stdin.write(json.dumps(config) + "\n")
        process.stdin.flush()
    endpoints = [json.loads(read_line(p))["address"] for p in processes]
    for process in processes:
        assert process.stdin is not None
        process.stdin.write(json.dumps({"endpoints": endpoints}) + "\n")
        process.stdin.flush()
    return processes


def read_line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"member process exited early with code {process.wait()}")
    return line


if __name__ == "__main__":
    main()
