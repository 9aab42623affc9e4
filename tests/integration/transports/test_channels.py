"""Channels over real ZeroMQ on loopback, CURVE on, with a server in its own process."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq

import support.transports_peers as peers
from transports.channels import Client, Server
from transports.errors import PeerTimeoutError, PeerUnreachableError, RemoteError, SecurityError
from transports.keys import generate_keypair, trust
from transports.linkemu import LinkEmulator, LinkSpec
from transports.security import Security
from transports.wire import Frame, encode


@pytest.fixture
def remote(keys: tuple[Path, Path]) -> Iterator[tuple[str, bytes, Security]]:
    server_dir, client_dir = keys
    with peers.peer_process(server_dir) as (address, key, _):
        yield address, key, Security.from_dir(client_dir)


def test_secure_request_reply_across_processes(remote: tuple[str, bytes, Security]) -> None:
    address, key, security = remote
    x = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    with Client(address, security, server_public_key=key) as client:
        assert client.heartbeat(10) > 0
        reply = client.request(Frame("echo", meta={"a": 1}, tensors={"x": x}), 10)
        assert reply.kind == "echo" and reply.meta == {"a": 1}
        np.testing.assert_array_equal(reply.tensors["x"], x)
        big = np.arange(150_000, dtype=np.float32)  # 600 KB: 256 KiB pieces each way
        echoed_big = client.request(Frame("echo", tensors={"big": big, "x": x}), 10)
        np.testing.assert_array_equal(echoed_big.tensors["big"], big)
        np.testing.assert_array_equal(echoed_big.tensors["x"], x)
        compressed = client.request(Frame("echo", tensors={"x": x}), 10, compression="fp16")
        np.testing.assert_allclose(compressed.tensors["x"], x, rtol=2e-3, atol=1e-3)
        with pytest.raises(RemoteError) as info:
            client.request(Frame("nonsense"), 10)
        assert info.value.error_type == "ValueError" and "nonsense" in info.value.remote_message
    with Client(address, security, server_public_key=key, compression="int8") as lossy:
        echoed = lossy.request(Frame("echo", tensors={"x": x}), 10).tensors["x"]
        assert not np.array_equal(echoed, x)  # int8 on the way out (the echo comes back exact)
        np.testing.assert_allclose(echoed, x, atol=np.abs(x).max() / 127)


def test_server_key_is_found_by_address(keys: tuple[Path, Path]) -> None:
    server_dir, client_dir = keys
    with peers.peer_process(server_dir) as (address, key, _):
        security = Security.from_dir(client_dir)
        with pytest.raises(SecurityError, match="keys trust"):
            Client(address, security)
        trust(client_dir, key, "server", address=address)
        with Client(address, security) as client:
            assert client.request(Frame("echo"), 10).kind == "echo"


def test_unauthenticated_peer_cannot_send_anything_that_is_acted_on(
    remote: tuple[str, bytes, Security],
) -> None:
    address, key, security = remote
    stranger = Security(keypair=generate_keypair())
    with Client(address, stranger, server_public_key=key) as intruder:
        with pytest.raises(SecurityError, match=f"{address} does not trust this machine's key"):
            intruder.request(Frame("echo"), 1.0)
        with pytest.raises(SecurityError, match="keys trust"):
            intruder.request(Frame("exit"), 0.3)
        assert intruder.recv(0.3) is None
    plain = Security.insecure_mode()
    with Client(address, plain) as insecure, pytest.raises(SecurityError, match="insecure"):
        insecure.request(Frame("exit"), 1.0)
    with Client(address, security, server_public_key=key) as friend:
        assert friend.request(Frame("count"), 10).meta["acted"] == 1  # only this request


def test_keys_allowed_at_run_time_are_admitted(remote: tuple[str, bytes, Security]) -> None:
    address, key, security = remote
    newcomer = Security(keypair=generate_keypair())
    with Client(address, newcomer, server_public_key=key) as late, pytest.raises(SecurityError):
        late.request(Frame("echo"), 0.5)
    with Client(address, security, server_public_key=key) as coordinator:
        assert newcomer.keypair is not None
        coordinator.request(Frame("allow", meta={"key": newcomer.keypair.public.decode()}), 10)
    with Client(address, newcomer, server_public_key=key) as late:
        assert late.request(Frame("echo"), 10).kind == "echo"


def test_garbage_frames_never_crash_the_server(remote: tuple[str, bytes, Security]) -> None:
    address, key, security = remote
    rng = random.Random(1)
    with Client(address, security, server_public_key=key) as client:
        raw = client._socket  # the DEALER under the client: send bytes the wire format forbids
        sent = 0
        for _ in range(200):
            parts = [rng.randbytes(rng.randint(0, 40)) for _ in range(rng.randint(1, 4))]
            raw.send_multipart(parts)
            sent += 1
        header = encode(Frame("echo", tensors={"x": np.zeros(4, np.float32)}))
        raw.send_multipart([header[0], b"\x00" * 3])  # length mismatch
        errors = 0
        deadline = time.monotonic() + 20
        while errors < sent + 1 and time.monotonic() < deadline:
            frame = client.recv(2.0)
            if frame is None:
                continue
            assert frame.is_error and frame.meta["error_type"] == "ProtocolError"
            errors += 1
        assert errors == sent + 1
        raw.send_multipart([b"\x00" * (2 << 20)])  # over the peer's 1 MiB limit: dropped by libzmq
        # an oversized frame makes libzmq drop the connection (and what was queued on it);
        # the DEALER reconnects by itself and the server still serves
        for _attempt in range(10):
            try:
                reply = client.request(Frame("echo", tensors={"x": np.ones(3, np.int8)}), 1.0)
                break
            except PeerTimeoutError:
                continue
        np.testing.assert_array_equal(reply.tensors["x"], np.ones(3, np.int8))


def test_error_reply_reaches_the_request_that_caused_it(
    remote: tuple[str, bytes, Security],
) -> None:
    address, key, security = remote
    with Client(address, security, server_public_key=key) as client:
        parts = encode(Frame("echo", request_id=77, tensors={"x": np.zeros(2, np.int32)}))
        client._socket.send_multipart([parts[0], b"\x00"])
        frame = client.recv(10)
        assert frame is not None and frame.is_error and frame.request_id == 77
        assert "declares 8 bytes, frame has 1" in frame.meta["message"]


def test_unsolicited_frames_reach_a_client_by_identity(remote: tuple[str, bytes, Security]) -> None:
    address, key, security = remote
    with Client(address, security, server_public_key=key, identity=b"coordinator") as client:
        client.send(Frame("push", meta={"n": 3}))
        got = [client.recv(10) for _ in range(3)]
        assert [f.meta["i"] for f in got if f is not None] == [0, 1, 2]
        assert client.request(Frame("echo"), 10).kind == "echo"


def test_frames_arriving_during_a_request_are_kept_for_recv() -> None:
    security = Security(keypair=generate_keypair())
    assert security.keypair is not None
    with Server("tcp://127.0.0.1:0", security) as server:
        server.allow(security.keypair.public)
        with Client(server.address, security, server_public_key=security.keypair.public) as client:

            def answer() -> None:
                incoming = server.recv(10)
                assert incoming is not None and incoming.frame is not None
                assert incoming.peer_key == security.keypair.public.decode()  # type: ignore[union-attr]
                server.send(incoming.peer, Frame("stream", request_id=999))
                server.reply(incoming, Frame("answer"))

            thread = threading.Thread(target=answer)
            thread.start()
            assert client.request(Frame("ask"), 10).kind == "answer"
            thread.join()
            streamed = client.recv(1)
            assert streamed is not None and streamed.kind == "stream"


def test_sending_to_an_unknown_identity_is_a_typed_error() -> None:
    server = Server("tcp://127.0.0.1:0", Security.insecure_mode())
    with server, pytest.raises(PeerUnreachableError, match="nobody"):
        server.send(b"nobody", Frame("x"))


def test_timeout_names_the_address_and_close_does_not_hang() -> None:
    context = zmq.Context()
    probe = context.socket(zmq.ROUTER)
    port = probe.bind_to_random_port("tcp://127.0.0.1")
    probe.close(linger=0)  # a port nobody listens on any more
    context.term()
    address = f"tcp://127.0.0.1:{port}"
    client = Client(address, Security.insecure_mode())
    start = time.monotonic()
    with pytest.raises(PeerTimeoutError, match=f"{address}.*0.3 s"):
        client.request(Frame("x", tensors={"big": np.zeros(1 << 16, np.uint8)}), 0.3)
    with pytest.raises(PeerTimeoutError):  # nothing is queued for a server that is down
        client.send(Frame("queued"), timeout_s=0.2)
    client.close()
    assert time.monotonic() - start < 3.0


def test_insecure_mode_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="transports.security"):
        Security.insecure_mode()
    assert "security is OFF" in caplog.text
    with pytest.raises(SecurityError, match="insecure_mode"):
        Security()


def test_emulated_link_delays_drops_and_disconnects() -> None:
    security = Security.insecure_mode()
    with Server("tcp://127.0.0.1:0", security) as server:
        emulator = LinkEmulator({server.address: LinkSpec(delay_s=0.05)})

        def echo_forever(stop: threading.Event) -> None:
            while not stop.is_set():
                incoming = server.recv(0.05)
                if incoming is not None:
                    server.reply(incoming, Frame("pong"))

        stop = threading.Event()
        thread = threading.Thread(target=echo_forever, args=(stop,))
        thread.start()
        try:
            with Client(server.address, security, emulation=emulator) as client:
                client.request(Frame("warm"), 5)
                start = time.perf_counter()
                client.request(Frame("ping"), 5)
                assert time.perf_counter() - start >= 0.05
            lossy = LinkEmulator(default=LinkSpec(loss=1.0))
            with Client(server.address, security, emulation=lossy) as client:
                with pytest.raises(PeerTimeoutError):
                    client.request(Frame("ping"), 0.3)
                assert lossy.dropped == 1
            down = LinkEmulator(default=LinkSpec(disconnect_windows=((0.0, 0.4),)))
            with Client(server.address, security, emulation=down) as client:
                with pytest.raises(PeerTimeoutError):
                    client.request(Frame("ping"), 0.2)
                time.sleep(0.25)
                assert client.request(Frame("ping"), 5).kind == "pong"
        finally:
            stop.set()
            thread.join()
