"""Agent settings and every timeout the agent waits on.

Each timeout is defined here, once, with why it has the value it has; the
SDK's client-side timeouts live in `edge_runtime.sdk.config`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from edge_runtime.errors import ConfigError

# How long the control loop blocks waiting for a frame before it looks at the
# outbox of finished stage results and the shutdown flag. Stage workers wake the
# loop through an inproc socket, so this only bounds shutdown latency.
LOOP_POLL_S = 0.2

# Activations to the next agent have no send timeout on purpose: ZeroMQ queues
# them while the connection is (re)made, and a next agent that died is found by
# the coordinator's heartbeats, which fail the request naming that agent.

# A link probe (`probe_link`) pings a peer agent this many times per size.
PROBE_ROUNDS = 5

# A link probe gives up on a peer that does not answer one ping within this.
PROBE_TIMEOUT_S = 5.0

# Chunks of a shard not completed within this after their last chunk arrived are
# dropped, so an interrupted deploy does not hold disk forever.
PARTIAL_UPLOAD_TTL_S = 600.0

# A deployed shard's resident memory is estimated as its file size times this
# factor when the plan gives no `memory_bytes` (weights plus onnxruntime's
# arena and activations; 1.5 matched the digits and skip models measured here).
SHARD_MEMORY_FACTOR = 1.5

_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "kib": 2**10,
    "m": 10**6, "mb": 10**6, "mib": 2**20,
    "g": 10**9, "gb": 10**9, "gib": 2**30,
    "t": 10**12, "tb": 10**12, "tib": 2**40,
}  # fmt: skip


def parse_size(text: str | int) -> int:
    """Bytes in a human size: 512MB, 1GB, 1.5GiB, 2048 (decimal units unless `i`)."""
    if isinstance(text, int):
        if text < 0:
            raise ConfigError(f"size must be non-negative, got {text}")
        return text
    match = _SIZE.match(text)
    unit = (match.group(2) or "").lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ConfigError(f"cannot read size {text!r}: write e.g. 512MB, 1GB or 1.5GiB")
    return int(float(match.group(1)) * _UNITS[unit])


# Where an agent keeps verified shards unless --cache-dir says otherwise.
DEFAULT_CACHE_DIR = Path("~/.cache/edge-runtime/agent").expanduser()


@dataclass(frozen=True)
class AgentConfig:
    """What `edge-runtime agent` was started with."""

    listen: str = "tcp://0.0.0.0:7700"
    name: str = ""
    preset: str | None = None
    memory_budget: int | None = None
    threads: int | None = None
    cache_dir: Path = DEFAULT_CACHE_DIR
    keys_dir: Path | None = None
    insecure: bool = False
    refresh_profile: bool = False
    profile_cache: Path | None = None  # None: devices' default (~/.cache/edge-runtime/profiles)
