"""A malformed request still gets its error reply under its own request id (CURVE on)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zmq

import edge_runtime as er
from edge_runtime.protocol import kinds as p
from transports.security import Security
from transports.wire import Frame, decode, encode


def test_malformed_request_gets_an_error_under_its_id_and_the_agent_keeps_serving() -> None:
    with er.local_cluster(1) as local:
        info = local.agents[0]
        assert info.public_key is not None
        security = Security.from_dir(Path(local.session_dir) / "coordinator-keys")
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        security.apply_client(sock, info.public_key.encode())
        sock.connect(info.address)
        try:
            # a readable header whose tensor frame is missing: undecodable, id 42 readable
            parts = encode(Frame(kind=p.RUN, request_id=42,
                                 tensors={"x": np.zeros(4, np.float32)}))
            sock.send_multipart(parts[:1])
            assert sock.poll(10_000)
            reply = decode(sock.recv_multipart())
            assert reply.is_error and reply.request_id == 42
            assert reply.meta["error_type"] == "ProtocolError"
            assert "tensor frames arrived" in reply.meta["message"]
            # no readable id at all: the error still comes back, under id 0
            sock.send_multipart([b"\xc1 not msgpack"])
            assert sock.poll(10_000)
            reply = decode(sock.recv_multipart())
            assert reply.is_error and reply.request_id == 0
            # and the agent keeps serving
            sock.send_multipart(encode(Frame(kind=p.PING, request_id=43)))
            assert sock.poll(10_000)
            reply = decode(sock.recv_multipart())
            assert not reply.is_error and reply.request_id == 43
        finally:
            sock.close()
            context.term()
        assert local.status()["agent0"]["errors_answered"] >= 2
