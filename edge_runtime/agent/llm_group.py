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
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from edge_runtime.agent.deployments import AgentContext
from edge_runtime.errors import DeployError, InputError
from edge_runtime.protocol import ShardSpec
from transports.collectives import CollectiveGroup, GroupListener
from transports.sealing import SealKeys
from transports.security import Security

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


class ShardGroup:
    """One share's listener (bound at load) and `CollectiveGroup` (built at connect)."""

    def __init__(self, spec: ShardSpec, ctx: AgentContext, deployment_id: str = "") -> None:
        self.spec = spec
        self._ctx = ctx
        self._deployment_id = deployment_id
        self._listener: GroupListener | None = None
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
        admitted before anyone dials."""
        security = self._security()
        host = f"tcp://{self._bind_host()}:0"
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
        if self.sealed:
            assert security.keypair is not None
            seal = SealKeys.from_curve(self.spec.rank, security.keypair.secret,
                                       [(k or "").encode() for k in self.spec.public_keys],
                                       self._deployment_id.encode())
            self.group = CollectiveGroup(self.spec.rank, self.endpoints, _PLAIN,
                                         timeout_s=self.spec.collective_timeout_s,
                                         listener=self._listener, seal_keys=seal,
                                         max_message_bytes=max_message_bytes(self.spec))
        else:
            keys = (None if security.insecure
                    else [(k or "").encode() for k in self.spec.public_keys])
            self.group = CollectiveGroup(self.spec.rank, self.endpoints, security,
                                         timeout_s=self.spec.collective_timeout_s,
                                         peer_keys=keys, listener=self._listener)
        # Every member connects now (CURVE handshakes included), not on the first token.
        self.group.barrier()

    def status(self) -> dict[str, object]:
        """What an operator (or a test) reads: where the group listens, whether it seals,
        and how many messages it refused (tampered, replayed, wrongly keyed, strangers')."""
        if self._listener is None:
            return {}
        group = self.group
        return {"address": self.address(), "sealed": self.sealed,
                "cipher": getattr(group, "cipher", None),
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


__all__ = ["ShardGroup", "max_message_bytes"]
