"""The collective side of an llm-shard: its listener, its group and its members' names.

Why apart from `llm_shard.py`: the share's job queue and worker decide *when* to
listen, connect and release; this module owns *how* — which host the listener binds
and advertises, which CURVE keys it admits before anyone dials, how a reconnect
reuses the bound listener, and which agent a collective timeout names.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from edge_runtime.agent.deployments import AgentContext
from edge_runtime.errors import DeployError, InputError
from edge_runtime.protocol import ShardSpec
from transports.collectives import CollectiveGroup, GroupListener
from transports.security import Security

_RANK = re.compile(r"^rank (\d+) ")


class ShardGroup:
    """One share's listener (bound at load) and `CollectiveGroup` (built at connect)."""

    def __init__(self, spec: ShardSpec, ctx: AgentContext) -> None:
        self.spec = spec
        self._ctx = ctx
        self._listener: GroupListener | None = None
        self.group: CollectiveGroup | None = None
        self.endpoints: list[str] = []

    def listen(self) -> None:
        """Bind the listener with every member's key admitted before anyone dials."""
        security = getattr(self._ctx, "security", None)
        if not isinstance(security, Security):
            raise DeployError(f"agent {self._ctx.name} has no transport security settings")
        keys = [] if security.insecure else [k.encode() for k in self.spec.public_keys if k]
        self._listener = GroupListener(f"tcp://{self._bind_host()}:0", security,
                                       peer_keys=keys)

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
        security = getattr(self._ctx, "security", None)
        assert isinstance(security, Security) and self._listener is not None
        keys = None if security.insecure else [(k or "").encode() for k in self.spec.public_keys]
        self.endpoints = list(endpoints)
        self.group = CollectiveGroup(self.spec.rank, self.endpoints, security,
                                     timeout_s=self.spec.collective_timeout_s,
                                     peer_keys=keys, listener=self._listener)
        # Every member connects now (CURVE handshakes included), not on the first token.
        self.group.barrier()

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


__all__ = ["ShardGroup"]
