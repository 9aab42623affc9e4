"""Agent settings and every timeout the agent waits on.

Each timeout is defined here, once, with why it has the value it has; the
SDK's client-side timeouts live in `edge_runtime.sdk.config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edge_runtime.envconfig import with_env_overrides

# A deployed shard's resident memory is estimated as its file size times this
# factor when the plan gives no `memory_bytes` (weights plus onnxruntime's
# arena and activations; 1.5 matched the digits and skip models measured here).
SHARD_MEMORY_FACTOR = 1.5

# Where an agent keeps verified shards unless --cache-dir says otherwise.
DEFAULT_CACHE_DIR = Path("~/.cache/edge-runtime/agent").expanduser()


AGENT_ENV_PREFIX = "EDGE_RUNTIME_AGENT_"
"""Every `AgentTimeouts` field can be overridden by EDGE_RUNTIME_AGENT_<FIELD>, e.g.
``EDGE_RUNTIME_AGENT_LEASE_DEFAULT_S=120``."""


@dataclass(frozen=True)
class AgentTimeouts:
    """Every time limit and size limit the agent enforces, with why (one object;
    environment overrides: `AGENT_ENV_PREFIX`)."""

    # The control loop's longest nap: it wakes at once for frames and for finished
    # work, so this only bounds how late lease sweeps and shutdown happen.
    loop_poll_s: float = 0.2
    # A frame to the next pipeline agent waits at most this long for a connection whose
    # handshake succeeded (that agent may be restarting); then it is dropped and the
    # coordinator is answered with a typed error naming that agent. Never blocks the loop.
    peer_send_s: float = 5.0
    # One link-probe ping to a peer agent; a peer that misses it ends the probe at once
    # (probes run off the control loop, one at a time).
    probe_timeout_s: float = 2.0
    # Probes waiting to run beyond this are refused with "busy" (a flood of probes to
    # dead addresses must not queue minutes of work).
    probe_queue: int = 8
    # Deploys and uploads waiting for the loads lane beyond this are refused with "busy"
    # (each may hold a 1 MiB chunk or a spec; a flood must not grow memory without end).
    loads_queue: int = 64
    # Requests waiting for one pipeline stage's worker beyond this are refused with "busy"
    # (each holds its input tensors; the SDK keeps 8 in flight by default).
    stage_queue: int = 64
    # Pings per payload size in one link probe (the median is kept).
    probe_rounds: int = 5
    # An upload (shard or checkpoint file) whose last chunk arrived longer ago than
    # this is deleted, so an interrupted deploy does not hold disk forever.
    partial_upload_ttl_s: float = 600.0
    # Lease a coordinator session gets when it asks for none, and the bounds of what it
    # may ask for: an abandoned deployment is unloaded at most `lease_max_s` after its
    # coordinator went silent.
    lease_default_s: float = 30.0
    lease_min_s: float = 1.0
    lease_max_s: float = 3600.0
    # How often lapsed leases are looked for.
    lease_sweep_s: float = 0.5
    # Largest frame accepted from the network, enforced by libzmq before it buffers the
    # frame (also during the handshake, before authentication). Shard and checkpoint
    # uploads travel in 1 MiB chunks; 256 MiB leaves room for any activation.
    max_message_bytes: int = 256 * 1024 * 1024

    @classmethod
    def from_env(cls) -> AgentTimeouts:
        """Defaults with EDGE_RUNTIME_AGENT_* overrides applied."""
        return with_env_overrides(cls(), AGENT_ENV_PREFIX)


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
    # Directories whose checkpoints a deploy spec may name for this agent to read in place
    # (--allow-checkpoint-dir); any other path is not read: the files are sent instead.
    allowed_checkpoint_dirs: tuple[Path, ...] = ()
    timeouts: AgentTimeouts = field(default_factory=AgentTimeouts.from_env)
