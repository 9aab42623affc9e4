"""The bound socket a collective group member receives on, apart from the group.

Why its own object: with ``tcp://host:0`` the port is only known once bound, and
the address must be shared with every member before any group can be built; a
listener may also outlive its group (``close(keep_listener=True)``) so a rebuilt
group reuses the same address. `transports.group` builds one itself when none is
given.
"""

from __future__ import annotations

from collections.abc import Sequence

import zmq

from transports.security import Authorizer, Security
from transports.sockets import bound_address, configure_socket
from transports.wire import DEFAULT_MAX_MESSAGE_BYTES


class GroupListener:
    """The bound ROUTER a member receives on; bind it first when the port is chosen
    by the OS (``tcp://host:0``), share `address` with the group, then build the group.

    Pass the members' keys as `peer_keys` here when they are known: libzmq never
    retries a connection whose CURVE handshake was refused, so a member's key must
    be admitted before any member can reach this address."""

    def __init__(
        self,
        bind_address: str,
        security: Security,
        *,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        peer_keys: Sequence[bytes] = (),
    ) -> None:
        self.own_context = context is None
        self.context: zmq.Context[zmq.Socket[bytes]] = context or zmq.Context()
        self.security = security
        self.socket: zmq.Socket[bytes] = self.context.socket(zmq.ROUTER)
        configure_socket(self.socket)
        self.socket.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        self.socket.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.authorizer: Authorizer | None = None
        try:
            if not security.insecure:
                self.authorizer = Authorizer.acquire(self.context, security)
                for key in peer_keys:
                    self.authorizer.allow(key)
            security.apply_server(self.socket)
            self.socket.bind(bind_address)
        except BaseException:
            # A failed bind (port taken, bad address) must not leak the socket, the
            # authorizer's reference or a context this listener created.
            self.close()
            raise
        self.address = bound_address(self.socket)

    @property
    def closed(self) -> bool:
        return bool(self.socket.closed)

    def close(self) -> None:
        if self.socket.closed:
            return
        self.socket.close(linger=0)
        if self.authorizer is not None:
            self.authorizer.release()
            self.authorizer = None
        if self.own_context:
            self.context.term()
