"""Every timeout and limit the SDK (the coordinator) waits on, with why.

Each can be overridden per cluster (`connect(..., timeouts=Timeouts(...))`), the
request timeout per call (`run(..., timeout_s=...)`), and every field by the
environment: EDGE_RUNTIME_<FIELD> (e.g. ``EDGE_RUNTIME_HEARTBEAT_TIMEOUT_S=10`` for a
flaky Wi-Fi), read when the default `Timeouts` is made (`Timeouts.from_env()`).
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_runtime.envconfig import with_env_overrides

SDK_ENV_PREFIX = "EDGE_RUNTIME_"


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
    # Lease of this coordinator's deployments on each agent: renewed every third of it
    # by a background thread while the coordinator lives; once it lapses (the app
    # crashed, was paused or lost the network for this long) the agents unload them.
    lease_s: float = 30.0
    # A lost agent is tried again (hello, then re-introduced to the others) after this,
    # doubling with each loss up to `rejoin_backoff_max_s`, times a random factor in
    # [0.5, 1.5) so a fleet of coordinators does not knock in step.
    rejoin_backoff_s: float = 1.0
    rejoin_backoff_max_s: float = 30.0
    # An agent lost `flap_limit` times within `flap_window_s` is flapping (a bad Wi-Fi
    # link, a device rebooting in a loop): it is banned for `ban_s`, so requests are
    # not re-planned onto it again and again.
    flap_window_s: float = 300.0
    flap_limit: int = 3
    ban_s: float = 300.0
    # With the cluster away (no agent left that can hold the model) and the "queue"
    # policy, a request waits this long for agents to come back before the rest of
    # the fallback chain is tried.
    queue_s: float = 60.0

    @classmethod
    def from_env(cls) -> Timeouts:
        """The defaults with EDGE_RUNTIME_<FIELD> overrides applied."""
        return with_env_overrides(cls(), SDK_ENV_PREFIX)


DEFAULT_TIMEOUTS = Timeouts.from_env()

# Shard uploads are cut into chunks this big; each chunk is acknowledged, so
# progress is reported and a transfer never holds a whole model in one message.
CHUNK_BYTES = 1 << 20

# `run_many` keeps at most this many requests in flight by default: enough to
# fill a pipeline of a few stages, few enough to bound agent memory and queues.
DEFAULT_MAX_IN_FLIGHT = 8

# Identity prefix of the coordinator's DEALER sockets; agents route results to it.
CLIENT_IDENTITY_PREFIX = b"coordinator-"
