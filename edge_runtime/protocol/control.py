"""Control requests (coordinator -> agent) and their replies, one record per kind.

Each request is answered by the reply record named after it (frame kind "reply",
same request id) or by an error frame (`ErrorInfo`). Lease fields: a coordinator
session (`session`, 8-64 chars of [0-9a-f-]) owns what it deploys and introduces;
`hello` asks for a lease of `lease_s` seconds, which `join`, `deploy` and `renew`
keep alive.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from devices.links import LinkProfile
from devices.profile import DeviceProfile
from edge_runtime.protocol import kinds as k
from edge_runtime.protocol.fields import (
    MAX_NAME,
    converted,
    fail,
    flag,
    ident,
    integer,
    number,
    optional,
    plain,
    public_key,
    seq,
    session_id,
    sha256_hex,
    text,
    wire,
)
from edge_runtime.protocol.record import Record
from edge_runtime.protocol.records import (
    MAX_MEMBERS,
    Gone,
    LlmStageSpec,
    Peer,
    ShardSpec,
    StageSpec,
)

MAX_LEASE_S = 86400.0
_lease = number(0.0, MAX_LEASE_S, above=True)
"""A lease length in seconds, as a coordinator asks for it (the agent clamps it)."""
MAX_DEPLOYMENTS = 1024
"""Most deployments one agent reports or one coordinator renews at once."""
MAX_SHARDS = 1024
"""Most shards asked about in one has_shards."""

_profile = converted(DeviceProfile.from_dict, "device profile")
_link = converted(LinkProfile.from_dict, "link profile")

DEPLOYMENT_SPECS: dict[str, type[Record]] = {k.ONNX_STAGE: StageSpec, k.LLM_SHARD: ShardSpec,
                                              k.LLM_STAGE: LlmStageSpec}
"""Deployment type -> the record of its `deploy` spec (`register_spec` adds one)."""


def register_spec(deployment_type: str, spec: type[Record]) -> None:
    """Let `deploy` carry a new deployment type's spec (a plugin's `Record`)."""
    DEPLOYMENT_SPECS[deployment_type] = spec


@dataclass(frozen=True)
class Hello(Record):
    KIND = k.HELLO
    session: str = field(metadata=wire(session_id))
    lease_s: float = field(metadata=wire(_lease))


@dataclass(frozen=True)
class HelloReply(Record):
    """Who the agent is: its name, measured (or emulated) profile, keys and backends."""

    KIND = k.REPLY
    name: str = field(metadata=wire(ident))
    version: str = field(metadata=wire(text(64)))
    protocol: int = field(metadata=wire(integer(0, 1 << 16)))
    pid: int = field(metadata=wire(integer(0, 1 << 32)))
    profile: DeviceProfile = field(metadata=wire(_profile))
    preset: str | None = field(metadata=wire(optional(text(MAX_NAME))))
    emulated: bool = field(metadata=wire(flag()))
    caps: dict[str, Any] | None = field(metadata=wire(optional(plain())))
    label: str = field(metadata=wire(text(MAX_NAME)))
    threads: int | None = field(metadata=wire(optional(integer(1, 4096))))
    memory_budget: int | None = field(metadata=wire(optional(integer(0))))
    backends: tuple[str, ...] = field(metadata=wire(seq(text(32), 32)))
    address: str = field(metadata=wire(ident))
    public_key: str | None = field(metadata=wire(optional(public_key)))
    # the lease this agent granted the session (the request clamped to its bounds)
    lease_s: float = field(metadata=wire(_lease))
    # the agent's wall clock as it answered: one sample of its offset from the
    # coordinator's clock, so traced spans of several devices line up (trace/clock.py)
    clock: float | None = field(default=None, metadata=wire(optional(number(0.0, 1e12))))


@dataclass(frozen=True)
class Ping(Record):
    """A heartbeat or link-probe round trip: the reply echoes the tensors."""

    KIND = k.PING


@dataclass(frozen=True)
class Pong(Record):
    KIND = k.REPLY


@dataclass(frozen=True)
class Profile(Record):
    KIND = k.PROFILE


@dataclass(frozen=True)
class ProfileReply(Record):
    KIND = k.REPLY
    profile: DeviceProfile = field(metadata=wire(_profile))


@dataclass(frozen=True)
class Join(Record):
    """The cluster's agents: the receiver admits their keys (activations, probes)."""

    KIND = k.JOIN
    session: str = field(metadata=wire(session_id))
    peers: tuple[Peer, ...] = field(metadata=wire(seq(Peer.parse, MAX_MEMBERS)))
    lease_s: float = field(metadata=wire(_lease))


@dataclass(frozen=True)
class JoinReply(Record):
    KIND = k.REPLY
    allowed: int = field(metadata=wire(integer(0, MAX_MEMBERS)))


@dataclass(frozen=True)
class ProbeLink(Record):
    """Measure round trip and bandwidth from the receiver to the agent at `address`."""

    KIND = k.PROBE_LINK
    address: str = field(metadata=wire(ident))
    public_key: str | None = field(metadata=wire(optional(public_key)))
    name: str = field(metadata=wire(ident))


@dataclass(frozen=True)
class ProbeLinkReply(Record):
    KIND = k.REPLY
    link: LinkProfile = field(metadata=wire(_link))


@dataclass(frozen=True)
class ShardRef(Record):
    sha256: str = field(metadata=wire(sha256_hex))
    ext: str = field(metadata=wire(text(16, min_len=1)))


@dataclass(frozen=True)
class HasShards(Record):
    KIND = k.HAS_SHARDS
    shards: tuple[ShardRef, ...] = field(metadata=wire(seq(ShardRef.parse, MAX_SHARDS)))


@dataclass(frozen=True)
class HasShardsReply(Record):
    KIND = k.REPLY
    missing: tuple[str, ...] = field(metadata=wire(seq(sha256_hex, MAX_SHARDS)))


@dataclass(frozen=True)
class PutChunk(Record):
    """One chunk of a shard upload; tensor `data` (uint8[n]) holds its bytes."""

    KIND = k.PUT_CHUNK
    sha256: str = field(metadata=wire(sha256_hex))
    ext: str = field(metadata=wire(text(16, min_len=1)))
    offset: int = field(metadata=wire(integer(0)))
    total: int = field(metadata=wire(integer(0)))

    def _checked(self, where: str) -> PutChunk:
        if self.offset > self.total:
            fail(f"{where}.offset", f"{self.offset} is past the total {self.total}")
        return self


@dataclass(frozen=True)
class PutChunkReply(Record):
    KIND = k.REPLY
    complete: bool = field(metadata=wire(flag()))


@dataclass(frozen=True)
class Deploy(Record):
    """Load a deployment; `spec` is the record of `type` (`DEPLOYMENT_SPECS`)."""

    KIND = k.DEPLOY
    deployment_id: str = field(metadata=wire(ident))
    type: str = field(metadata=wire(text(64, min_len=1)))
    spec: Record = field(metadata=wire(plain(64)))
    session: str = field(metadata=wire(session_id))
    # the session's lease, as in hello: a deploy may (re)create the session (after an agent
    # restart or a lapse), and it must get the lease its coordinator renews for
    lease_s: float = field(metadata=wire(_lease))

    def _checked(self, where: str) -> Deploy:
        spec_type = DEPLOYMENT_SPECS.get(self.type)
        if spec_type is None:
            fail(f"{where}.type", f"{self.type!r} is not one of {sorted(DEPLOYMENT_SPECS)}")
        return Deploy(self.deployment_id, self.type,
                      spec_type.parse(self.spec, f"{where}.spec"), self.session, self.lease_s)


@dataclass(frozen=True)
class DeployReply(Record):
    """What the deploy reserved, and the files the deployment still waits for."""

    KIND = k.REPLY
    memory_bytes: int = field(metadata=wire(integer(0)))
    memory_used: int = field(metadata=wire(integer(0)))
    memory_budget: int | None = field(metadata=wire(optional(integer(0))))
    missing_files: tuple[str, ...] = field(metadata=wire(seq(ident, 1024)))
    status: dict[str, Any] = field(metadata=wire(plain()))


@dataclass(frozen=True)
class Unload(Record):
    KIND = k.UNLOAD
    deployment_id: str = field(metadata=wire(ident))


@dataclass(frozen=True)
class UnloadReply(Record):
    KIND = k.REPLY
    unloaded: str = field(metadata=wire(ident))


@dataclass(frozen=True)
class Status(Record):
    KIND = k.STATUS


@dataclass(frozen=True)
class StatusReply(Record):
    """The agent's state; each deployment's status is a free-form map for people."""

    KIND = k.REPLY
    name: str = field(metadata=wire(ident))
    address: str = field(metadata=wire(ident))
    emulated: bool = field(metadata=wire(flag()))
    preset: str | None = field(metadata=wire(optional(text(MAX_NAME))))
    uptime_s: float = field(metadata=wire(number()))
    memory_budget: int | None = field(metadata=wire(optional(integer(0))))
    memory_used: int = field(metadata=wire(integer(0)))
    requests_served: int = field(metadata=wire(integer(0)))
    errors_answered: int = field(metadata=wire(integer(0)))
    deployments: dict[str, Any] = field(metadata=wire(plain()))


@dataclass(frozen=True)
class Shutdown(Record):
    KIND = k.SHUTDOWN


@dataclass(frozen=True)
class ShutdownReply(Record):
    KIND = k.REPLY
    stopping: bool = field(metadata=wire(flag()))


@dataclass(frozen=True)
class Renew(Record):
    """Keep `session`'s lease; the reply names those of `deployment_ids` that are gone."""

    KIND = k.RENEW
    session: str = field(metadata=wire(session_id))
    deployment_ids: tuple[str, ...] = field(metadata=wire(seq(ident, MAX_DEPLOYMENTS)))
    lease_s: float = field(metadata=wire(_lease))


@dataclass(frozen=True)
class RenewReply(Record):
    KIND = k.REPLY
    gone: tuple[Gone, ...] = field(metadata=wire(seq(Gone.parse, MAX_DEPLOYMENTS)))
