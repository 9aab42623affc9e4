"""Every timeout and limit the SDK (the coordinator) waits on, with why.

Each can be overridden per cluster (`connect(..., timeouts=Timeouts(...))`) and
the request timeout per call (`run(..., timeout_s=...)`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Timeouts:
    """Seconds the coordinator waits before giving up on an agent."""

    # One inference end to end (all stages). Generous: an emulated Pi running a
    # real model stage can take seconds, and a dead agent is caught sooner by
    # heartbeats anyway.
    request_s: float = 30.0
    # Answer to hello/status/ping. An agent's control loop never computes, so
    # it answers within milliseconds unless it is gone.
    hello_s: float = 10.0
    # Loading one deployment (onnxruntime session creation, digest check).
    deploy_s: float = 60.0
    # One shard chunk acknowledged (a chunk is `chunk_bytes`; 1 MiB over a slow
    # Wi-Fi link of 1 MB/s still lands in ~1 s).
    chunk_s: float = 30.0
    # How often agents involved in pending requests are pinged while waiting.
    heartbeat_interval_s: float = 1.0
    # An agent that answered nothing (no result, no heartbeat) for this long is
    # declared unavailable and its pending requests fail with
    # `AgentUnavailableError`. Three missed heartbeats.
    heartbeat_timeout_s: float = 3.0
    # A local_cluster agent process must answer hello within this after start
    # (imports + self-profile, which is cached after the first run).
    agent_start_s: float = 90.0
    # Link probes between agents during deploy (see `links.py`).
    probe_s: float = 10.0


DEFAULT_TIMEOUTS = Timeouts()

# Shard uploads are cut into chunks this big; each chunk is acknowledged, so
# progress is reported and a transfer never holds a whole model in one message.
CHUNK_BYTES = 1 << 20

# `run_many` keeps at most this many requests in flight by default: enough to
# fill a pipeline of a few stages, few enough to bound agent memory and queues.
DEFAULT_MAX_IN_FLIGHT = 8

# Identity prefix of the coordinator's DEALER sockets; agents route results to it.
CLIENT_IDENTITY_PREFIX = b"coordinator-"
