"""Saying hello to an agent and introducing the agents of a cluster to each other.

A hello opens this coordinator's session (and lease) on the agent and returns its
profile and key; a join tells each agent the others' names and keys, so they accept
each other's activations. Both happen when a cluster is assembled, and again when a
lost agent comes back (`Agents.rejoin_due`): a restarted agent knows nothing of the
session, and the others must accept it again.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

from edge_runtime.errors import AgentError
from edge_runtime.protocol import PROTOCOL_VERSION, Hello, HelloReply, Join, JoinReply, Peer
from edge_runtime.sdk.agent_link import AgentLink
from edge_runtime.sdk.clocks import clock_offsets
from edge_runtime.sdk.errors_map import error_from_frame
from edge_runtime.sdk.hub import Hub
from edge_runtime.sdk.info import AgentInfo, parse_reply
from transports.wire import Frame


def hello(hub: Hub, link: AgentLink, timeout_s: float | None = None) -> HelloReply:
    """The agent's hello, which also opens this coordinator's session (and lease) there."""
    request = hello_request(hub)
    sent = time.time()
    frame = hub.request(link, request.KIND, request.to_meta(),
                        timeout_s=hub.timeouts.hello_s if timeout_s is None else timeout_s)
    received = time.time()
    reply = hello_reply(hub, link, frame)
    # the round trip is a clock-offset sample: traced spans of this agent line up (trace/)
    clock_offsets(hub).observe(link.address, sent, reply.clock, received)
    return reply


def hello_request(hub: Hub) -> Hello:
    return Hello(session=hub.session, lease_s=hub.timeouts.lease_s)


def hello_reply(hub: Hub, link: AgentLink, frame: Frame) -> HelloReply:
    """The typed reply to a hello (or the error it is), checked; renews on its grant."""
    if frame.is_error:
        raise error_from_frame(frame, link.name)
    reply = parse_reply(HelloReply, frame.meta, link.name, Hello.KIND)
    if reply.protocol != PROTOCOL_VERSION:
        raise AgentError(f"speaks protocol {reply.protocol}, this SDK {PROTOCOL_VERSION}; run "
                         "the same edge-runtime release on the agents and here", agent=link.name)
    hub.leases.grant(link.address, reply.lease_s)  # renew often enough for what it granted
    return reply


def agent_info(reply: HelloReply, address: str, name: str) -> AgentInfo:
    return AgentInfo(
        name=name, address=address, public_key=reply.public_key,
        profile=replace(reply.profile, name=name), preset=reply.preset,
        emulated=reply.emulated, label=reply.label or name, backends=reply.backends,
        memory_budget=reply.memory_budget, pid=reply.pid,
    )


def introduce(hub: Hub, links: Sequence[AgentLink], infos: Sequence[AgentInfo],
              timeout_s: float | None = None) -> None:
    """Tell each of `links` the names and keys of all `infos` (its peers)."""
    join = Join(session=hub.session, peers=tuple(Peer(i.name, i.public_key) for i in infos),
                lease_s=hub.timeouts.lease_s)
    for link in links:
        answer = hub.request(link, join.KIND, join.to_meta(), timeout_s=timeout_s)
        if answer.is_error:
            raise error_from_frame(answer, link.name)
        parse_reply(JoinReply, answer.meta, link.name, join.KIND)


__all__ = ["agent_info", "hello", "hello_reply", "hello_request", "introduce"]
