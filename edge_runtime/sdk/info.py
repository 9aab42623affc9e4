"""`AgentInfo` (an agent as its hello described it) and typed decoding of replies.

Below `membership.py` and `agents.py`, which both need them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from devices.profile import DeviceProfile
from edge_runtime.errors import AgentError
from edge_runtime.protocol import Record
from transports.errors import ProtocolError

R = TypeVar("R", bound=Record)


@dataclass(frozen=True)
class AgentInfo:
    """One agent as its hello described it. `profile.name` is the agent's unique name."""

    name: str
    address: str
    public_key: str | None
    profile: DeviceProfile
    preset: str | None
    emulated: bool
    label: str
    backends: tuple[str, ...]
    memory_budget: int | None
    pid: int


def parse_reply(reply_type: type[R], meta: object, agent: str, kind: str) -> R:
    """`reply_type` decoded from a reply's meta; an agent speaking another protocol
    version (or a broken one) is an `AgentError` naming it."""
    try:
        return reply_type.from_meta(meta)
    except ProtocolError as error:
        raise AgentError(f"malformed reply to {kind}: {error.reason}; run the same "
                         "edge-runtime release on the agents and here", agent=agent) from None


__all__ = ["AgentInfo", "parse_reply"]
