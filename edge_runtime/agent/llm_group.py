"""The collective side of an llm-shard: its listener, its group and its members' names.

Why apart from `llm_shard.py`: the share's job queue and worker decide *when* to
listen, connect and release; this module owns *how* — which host the listener binds
and advertises, how the group is secured, how a reconnect reuses the bound listener,
and which agent a collective timeout names.

Security: unless the agent runs `--insecure`, the group seals every message with an
AEAD (`transports.sealing`) under keys each pair of members agrees from their CURVE
keys (the deployment's `public_keys`, delivered over the CURVE-authenticated control
channel) and the deployment's id, over plain sockets: CURVE's per-frame cost grows
fast with the frame, and an LLM group sends two allreduces per layer per token. The
listener then takes at most one step's largest message (`max_message_bytes`), so a
stranger cannot make it buffer more before its message is refused. Without every
member's key, the group falls back to CURVE sockets as before.

Links and sync: a sealed or ``--insecure`` group may run over plain TCP links instead of
ZeroMQ (`LINKS_ENV`, with a receive spin, `SPIN_ENV`); its allreduces carry activations
in the deployment's sync format (`ShardSpec.sync`, `transports.syncformat`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from edge_runtime.agent.deployments import AgentContext
from edge_runtime.errors import DeployError, InputError
from edge_runtime.protocol import ShardSpec
from transports.collectives import CollectiveGroup, GroupListener
from transports.groupstream import StreamListener
from transports.sealing import SealKeys
from transports.security import Security
from transports.syncformat import SYNC_FORMATS

_PLAIN = Security(insecure=True)
# Room above a step's largest tensor for headers and the sealing envelope.
_MESSAGE_SLACK_BYTES = 1 << 20


def max_message_bytes(spec: ShardSpec) -> int:
    """The largest collective message a step of this deployment sends: a prefill of the
    whole context (every sequence of a batch) as activations, or as logits columns."""
    from partitioner.tensor import TensorPlan

    shape = TensorPlan.from_json(spec.plan_json).shape
    tokens = spec.max_context * spec.max_batch
    return 4 * tokens * max(shape.hidden, shape.vocab) + _MESSAGE_SLACK_BYTES

_RANK = re.compile(r"^rank (\d+) ")

LINKS_ENV = "EDGE_RUNTIME_GROUP_LINKS"
"""Unset or ``tcp`` (the default): sealed and ``--insecure`` groups run over plain TCP
links (`transports.groupstream`: no ZeroMQ I/O thread per hop; on the 16-core host a
sealed 8 KB recursive-doubling allreduce of 8 pinned members took 247-259 µs against 373
over ZeroMQ, and 8 agents decoded a 4-bit token in 15.3 ms against 18.7, docs/
BENCHMARKS.md); ``zmq``: ZeroMQ sockets, as before. Every agent of a deployment must use
the same (a member dialling the other kind times out, naming the member)."""
SPIN_ENV = "EDGE_RUNTIME_GROUP_SPIN_US"
"""µs a receive inside a collective polls without sleeping before it blocks; unset:
`auto_spin_us`. Pays only with tcp links and an agent that has its core to itself: it
burns that core while waiting, and over ZeroMQ the message still waits on the I/O thread
(measured: no gain there)."""
AUTO_SPIN_US = 50
"""The spin `auto_spin_us` picks: an 8 KB exchange between pinned members takes ≈ 40 µs
on dev once spinning, so 50 µs covers a collective's wait on a peer that is on time."""


def auto_spin_us(tcp: bool, affinity: int, cpus: int, members_here: int) -> int:
    """The spin when none is set: `AUTO_SPIN_US` over tcp links when this agent is pinned
    (its `affinity` is fewer than the host's `cpus`) and the host has a core for each of
    the deployment's `members_here` (so pinned members need not share cores), else 0."""
    pinned = affinity < cpus
    return AUTO_SPIN_US if tcp and pinned and members_here * affinity <= cpus else 0


def link_settings() -> tuple[bool, int | None]:
    """(plain TCP links, spin µs or None for `auto_spin_us`) from the agent's environment
    (`LINKS_ENV`, `SPIN_ENV`)."""
    tcp = os.environ.get(LINKS_ENV, "").strip().lower() != "zmq"
    text = os.environ.get(SPIN_ENV, "").strip()
    try:
        return tcp, max(0, min(10_000, int(text))) if text else None
    except ValueError:
        return tcp, None


class ShardGroup:
    """One share's listener (bound at load) and `CollectiveGroup` (built at connect)."""

    def __init__(self, spec: ShardSpec, ctx: AgentContext, deployment_id: str = "") -> None:
        self.spec = spec
        self._ctx = ctx
        self._deployment_id = deployment_id
        self._listener: GroupListener | StreamListener | None = None
        self._tcp, self._spin_setting = link_settings()
        self._spin_us = 0
        self.group: CollectiveGroup | None = None
        self.endpoints: list[str] = []

    def _security(self) -> Security:
        security = getattr(self._ctx, "security", None)
        if not isinstance(security, Security):
            raise DeployError(f"agent {self._ctx.name} has no transport security settings")
        return security

    @property
    def sealed(self) -> bool:
        """True when the group seals its messages (secure, and every member's key known)."""
        security = self._security()
        return (not security.insecure and security.keypair is not None
                and all(self.spec.public_keys))

    def listen(self) -> None:
        """Bind the listener: plain for a sealed group, else CURVE with every member's key
        admitted before anyone dials. DeployError for a sync format this agent lacks."""
        if self.spec.sync not in SYNC_FORMATS:
            raise DeployError(f"sync format {self.spec.sync!r} is not one this agent knows "
                              f"({', '.join(SYNC_FORMATS)}); upgrade the agent or deploy "
                              "with sync='fp32'")
        security = self._security()
        host = f"tcp://{self._bind_host()}:0"
        if self._tcp and (self.sealed or security.insecure):
            self._listener = StreamListener(host, max_message_bytes=max_message_bytes(self.spec))
            return
        if self.sealed:
            self._listener = GroupListener(host, _PLAIN,
                                           max_message_bytes=max_message_bytes(self.spec))
            return
        keys = [] if security.insecure else [k.encode() for k in self.spec.public_keys if k]
        self._listener = GroupListener(host, security, peer_keys=keys)

    def _bind_host(self) -> str:
        address = str(getattr(self._ctx, "address", "tcp://127.0.0.1:0"))
        host = address.removeprefix("tcp://").rsplit(":", 1)[0]
        return host if host and host != "*" else "0.0.0.0"

    def address(self) -> str:
        """The listener's address as the other members dial it."""
        assert self._listener is not None
        port = self._listener.address.rsplit(":", 1)[1]
        host = self._bind_host()
        if host == "0.0.0.0":
            host = self.spec.advertise_host
        return f"tcp://{host}:{port}"

    def connect(self, endpoints: Sequence[str]) -> None:
        """Join the group of `endpoints` (one per member), replacing any earlier group."""
        if len(endpoints) != len(self.spec.names):
            raise InputError(f"llm_connect needs {len(self.spec.names)} endpoints")
        if self.group is not None:
            # A reconnect builds a new group on the same bound listener.
            self.group.close(keep_listener=True)
        security = self._security()
        assert self._listener is not None
        self.endpoints = list(endpoints)
        if self._spin_setting is not None:
            self._spin_us = self._spin_setting
        else:
            host = self.endpoints[self.spec.rank].removeprefix("tcp://").rsplit(":", 1)[0]
            here = sum(e.removeprefix("tcp://").rsplit(":", 1)[0] == host
                       for e in self.endpoints)
            self._spin_us = auto_spin_us(isinstance(self._listener, StreamListener),
                                         len(os.sched_getaffinity(0)), os.cpu_count() or 1,
                                         here)
        if self.sealed:
            assert security.keypair is not None
            seal = SealKeys.from_curve(self.spec.rank, security.keypair.secret,
                                       [(k or "").encode() for k in self.spec.public_keys],
                                       self._deployment_id.encode())
            self.group = CollectiveGroup(self.spec.rank, self.endpoints, _PLAIN,
                                         timeout_s=self.spec.collective_timeout_s,
                                         listener=self._listener, seal_keys=seal,
                                         max_message_bytes=max_message_bytes(self.spec),
                                         sync=self.spec.sync, spin_us=self._spin_us)
        else:
            keys = (None if security.insecure
                    else [(k or "").encode() for k in self.spec.public_keys])
            self.group = CollectiveGroup(self.spec.rank, self.endpoints, security,
                                         timeout_s=self.spec.collective_timeout_s,
                                         peer_keys=keys, listener=self._listener,
                                         sync=self.spec.sync, spin_us=self._spin_us)
        # Every member connects now (CURVE handshakes included), not on the first token.
        self.group.barrier()

    def status(self) -> dict[str, object]:
        """What an operator (or a test) reads: where the group listens, whether it seals,
        the format its allreduces sync activations in, and how many messages it refused
        (tampered, replayed, wrongly keyed, strangers')."""
        if self._listener is None:
            return {}
        group = self.group
        return {"address": self.address(), "sealed": self.sealed,
                "cipher": getattr(group, "cipher", None), "sync": self.spec.sync,
                "links": "tcp" if isinstance(self._listener, StreamListener) else "zmq",
                "spin_us": self._spin_us,
                "rejected": 0 if group is None else group.rejected}

    def member_name(self, member: str | None) -> str:
        """The agent name of a `CollectiveError.member` ("rank N ..."), or ""."""
        match = _RANK.match(member or "")
        if match and int(match.group(1)) < len(self.spec.names):
            return self.spec.names[int(match.group(1))]
        return ""

    def cancel(self) -> None:
        """Fail a collective in flight within ~0.1 s (safe from another thread)."""
        if self.group is not None:
            self.group.cancel()

    def close(self) -> None:
        """Close the group (and its listener), or the bare listener if never connected."""
        if self.group is not None:
            self.group.close()
        elif self._listener is not None:
            self._listener.close()


__all__ = ["AUTO_SPIN_US", "LINKS_ENV", "SPIN_ENV", "ShardGroup", "auto_spin_us",
           "link_settings", "max_message_bytes"]
