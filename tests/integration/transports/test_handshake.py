"""`HandshakeWatch` on real sockets: each way a connection fails is told apart,
within a second or two, and explained with a fix the user can paste.

Servers are secured by `Security`/`Authorizer` exactly as an agent's are (the ZAP
handler runs in its own thread), either in this process (a ROUTER) or in their own
(`support.transports_peers`, a transports `Server`): libzmq reports some failures
differently across processes (see transports/handshake.py), so both are tested.
Clients are DEALERs.
"""

from __future__ import annotations

import logging
import shlex
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
import zmq

import support.transports_peers as peers
from transports.handshake import ZAP_REFUSED, HandshakeState, HandshakeStatus, HandshakeWatch
from transports.keys import KeyPair, generate_keypair, init_keys, trust
from transports.security import Authorizer, Security

DEADLINE_S = 10.0  # generous: the events come within milliseconds on an idle machine

# (address, server public key or None if insecure); the server runs while in the block
ServerFactory = Callable[[Path | None], AbstractContextManager[tuple[str, bytes | None]]]


@pytest.fixture
def context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def client_keys(tmp_path: Path) -> KeyPair:
    return init_keys(tmp_path / "client")


@pytest.fixture(params=["in-process", "own-process"])
def server(request: pytest.FixtureRequest,
           context: zmq.Context[zmq.Socket[bytes]]) -> ServerFactory:
    """server(keys_dir or None for --insecure) -> context manager of (address, key)."""

    @contextmanager
    def in_process(keys_dir: Path | None) -> Iterator[tuple[str, bytes | None]]:
        security = Security(insecure=True) if keys_dir is None else Security.from_dir(keys_dir)
        authorizer = None if security.insecure else Authorizer.acquire(context, security)
        sock = context.socket(zmq.ROUTER)
        security.apply_server(sock)
        sock.bind("tcp://127.0.0.1:0")
        try:
            yield (sock.getsockopt_string(zmq.LAST_ENDPOINT),
                   None if security.keypair is None else security.keypair.public)
        finally:
            sock.close(linger=0)
            if authorizer is not None:
                authorizer.release()

    @contextmanager
    def own_process(keys_dir: Path | None) -> Iterator[tuple[str, bytes | None]]:
        with peers.peer_process(keys_dir or "--insecure") as (address, key, _):
            yield address, None if keys_dir is None else key

    return in_process if request.param == "in-process" else own_process


def server_keys(tmp_path: Path, trusted: KeyPair | None) -> Path:
    folder = tmp_path / "server"
    init_keys(folder)
    if trusted is not None:
        trust(folder, trusted.public, "client")
    return folder


def watch_client(ctx: zmq.Context[zmq.Socket[bytes]], security: Security, address: str,
                 server_key: bytes | None) -> tuple[zmq.Socket[bytes], HandshakeWatch]:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.IMMEDIATE, 1)
    security.apply_client(sock, server_key)
    watch = HandshakeWatch(sock)  # before connect: no event missed
    sock.connect(address)
    return sock, watch


def wait_for(watch: HandshakeWatch, done: Callable[[HandshakeState], bool]) -> HandshakeState:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        state = watch.poll()
        if done(state):
            return state
        assert time.monotonic() < deadline, f"still {state} after {DEADLINE_S} s"
        time.sleep(0.01)


def settles(status: HandshakeStatus) -> Callable[[HandshakeState], bool]:
    """Done at `status`, or at any other verdict (so a wrong one fails at once)."""
    return lambda state: state.status is status or state.handshake_failed


def test_trusted_client_connects_and_sees_the_server_go(
    tmp_path: Path, context: zmq.Context[zmq.Socket[bytes]], client_keys: KeyPair,
    server: ServerFactory,
) -> None:
    with server(server_keys(tmp_path, trusted=client_keys)) as (address, key):
        sock, watch = watch_client(context, Security(keypair=client_keys), address, key)
        state = wait_for(watch, settles(HandshakeStatus.CONNECTED))
        assert state.connected and state.failed_attempts == 0
    gone = wait_for(watch, lambda s: s.status is not HandshakeStatus.CONNECTED)
    assert gone.status in (HandshakeStatus.DISCONNECTED, HandshakeStatus.UNREACHABLE)
    assert not gone.handshake_failed
    watch.close()
    watch.close()  # idempotent
    sock.close(linger=0)


def test_a_refused_key_is_reported_with_the_command_that_fixes_it(
    tmp_path: Path, context: zmq.Context[zmq.Socket[bytes]], client_keys: KeyPair,
    server: ServerFactory,
) -> None:
    with server(server_keys(tmp_path, trusted=None)) as (address, key):
        started = time.monotonic()
        sock, watch = watch_client(context, Security(keypair=client_keys), address, key)
        state = wait_for(watch, settles(HandshakeStatus.KEY_REFUSED))
        assert time.monotonic() - started < 5.0, "a refusal must be known at once"
        assert state.status is HandshakeStatus.KEY_REFUSED and state.detail == ZAP_REFUSED
        message = state.explain("pi", address, client_keys.public, "laptop")
        command = message.split("on pi run: ", 1)[1]
        assert shlex.split(command) == [
            "edge-runtime", "keys", "trust", "--name", "laptop", "--",
            client_keys.public.decode()]
        # libzmq does not retry after a ZAP refusal (a fixed trust needs a new socket)
        time.sleep(0.5)
        assert watch.poll() == state
        watch.close()
        sock.close(linger=0)


def test_the_agent_logs_a_refused_key_once_with_a_pasteable_command(
    tmp_path: Path, context: zmq.Context[zmq.Socket[bytes]], client_keys: KeyPair,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="transports.security")
    security = Security.from_dir(server_keys(tmp_path, trusted=None))
    authorizer = Authorizer.acquire(context, security)
    router = context.socket(zmq.ROUTER)
    security.apply_server(router)
    router.bind("tcp://127.0.0.1:0")
    address = router.getsockopt_string(zmq.LAST_ENDPOINT)
    assert security.keypair is not None
    for _ in range(3):  # the same client tries again and again
        sock, watch = watch_client(context, Security(keypair=client_keys), address,
                                   security.keypair.public)
        wait_for(watch, settles(HandshakeStatus.KEY_REFUSED))
        watch.close()
        sock.close(linger=0)
    assert authorizer.refused == 3
    logged = [r.getMessage() for r in caplog.records if "untrusted key" in r.getMessage()]
    assert len(logged) == 1
    command = shlex.split(logged[0].split("trust it here with: ", 1)[1])
    assert command[:3] == ["edge-runtime", "keys", "trust"]
    assert command[-2:] == ["--", client_keys.public.decode()]
    router.close(linger=0)
    authorizer.release()


def test_a_wrong_server_key_is_told_apart(
    tmp_path: Path, context: zmq.Context[zmq.Socket[bytes]], client_keys: KeyPair,
    server: ServerFactory,
) -> None:
    with server(server_keys(tmp_path, trusted=client_keys)) as (address, _):
        sock, watch = watch_client(context, Security(keypair=client_keys), address,
                                   generate_keypair().public)
        state = wait_for(watch, settles(HandshakeStatus.SERVER_KEY_MISMATCH))
        assert state.status is HandshakeStatus.SERVER_KEY_MISMATCH
        assert "not that agent's key" in state.explain("pi", address, client_keys.public)
        # libzmq retries (and fails again): the attempts add up, the verdict stays
        later = wait_for(watch, lambda s: s.failed_attempts >= 3)
        assert later.status is HandshakeStatus.SERVER_KEY_MISMATCH
        watch.close()
        sock.close(linger=0)


@pytest.mark.parametrize("client_secure", [True, False], ids=["curve-client", "plain-client"])
def test_security_on_one_side_only_is_a_mismatch(
    tmp_path: Path, context: zmq.Context[zmq.Socket[bytes]], client_keys: KeyPair,
    server: ServerFactory, client_secure: bool,
) -> None:
    keys_dir = None if client_secure else server_keys(tmp_path, trusted=client_keys)
    with server(keys_dir) as (address, key):
        client = Security(keypair=client_keys) if client_secure else Security(insecure=True)
        sock, watch = watch_client(context, client, address, key or generate_keypair().public)
        state = wait_for(watch, settles(HandshakeStatus.SECURITY_MISMATCH))
        assert state.status is HandshakeStatus.SECURITY_MISMATCH
        message = state.explain("pi", address, client_keys.public if client_secure else None)
        assert "one side runs --insecure" in message
        other = " runs --insecure" if client_secure else " uses CURVE keys"
        assert f"agent at {address}{other}" in message
        watch.close()
        sock.close(linger=0)


def test_nothing_listening_is_unreachable_not_a_key_problem(
    context: zmq.Context[zmq.Socket[bytes]], client_keys: KeyPair
) -> None:
    # Port 1, not a freed ephemeral port: retries to a port in the ephemeral range may
    # pick it as their own source port and connect the socket to itself.
    try:
        socket.create_connection(("127.0.0.1", 1), timeout=5).close()
        pytest.skip("something listens on 127.0.0.1:1")
    except ConnectionRefusedError:
        pass
    address = "tcp://127.0.0.1:1"
    sock, watch = watch_client(context, Security(keypair=client_keys), address,
                               generate_keypair().public)
    state = wait_for(watch, lambda s: s.status is HandshakeStatus.UNREACHABLE
                     and s.failed_attempts >= 2)
    assert not state.handshake_failed
    assert "is the agent running" in state.explain("pi", address, client_keys.public)
    watch.close()
    sock.close(linger=0)
