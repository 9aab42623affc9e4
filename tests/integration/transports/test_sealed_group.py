"""A sealed group over plain sockets: every byte encrypted and authenticated (AEAD under
keys agreed from the members' CURVE keys); a stranger's, a tampered, a replayed and a
wrongly keyed message are refused with `DataAuthError` while the group serves on."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import zmq

from transports.collectives import CollectiveGroup, GroupListener
from transports.datawire import decode_data, encode_data
from transports.errors import DataAuthError
from transports.keys import generate_keypair
from transports.sealing import Sealer, SealKeys
from transports.security import Security

PLAIN = Security(insecure=True)


def test_forged_tampered_replayed_and_wrongly_keyed_messages_are_refused_and_serving_goes_on(
) -> None:
    pairs = [generate_keypair() for _ in range(2)]
    publics = [p.public for p in pairs]
    hub_listener = GroupListener("tcp://127.0.0.1:0", PLAIN)
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    fake_in = context.socket(zmq.ROUTER)  # member 1, played by the test
    fake_port = fake_in.bind_to_random_port("tcp://127.0.0.1")
    endpoints = [hub_listener.address, f"tcp://127.0.0.1:{fake_port}"]
    results: list[Any] = []

    def hub() -> None:
        group = CollectiveGroup(0, endpoints, PLAIN, listener=hub_listener, timeout_s=10.0,
                                seal_keys=SealKeys.from_curve(0, pairs[0].secret, publics,
                                                              b"dep-1"))
        try:
            results.extend(np.array(group.star_allreduce(np.full(4, 1.0, np.float32), 0))
                           for _ in range(2))
            results.append(group.rejected)
        except Exception as error:  # handed back to the test
            results.append(error)
        finally:
            group.close()

    thread = threading.Thread(target=hub)
    thread.start()
    out = context.socket(zmq.DEALER)
    out.connect(endpoints[0])
    mine = Sealer(SealKeys.from_curve(1, pairs[1].secret, publics, b"dep-1"))
    stranger = generate_keypair()  # a key pair the hub never heard of, claiming rank 1
    forger = Sealer(SealKeys.from_curve(1, stranger.secret, publics, b"dep-1"))
    other_deployment = Sealer(SealKeys.from_curve(1, pairs[1].secret, publics, b"dep-2"))

    first = mine.seal(0, encode_data(1, 0, 1, np.full(4, 2.0, np.float32), split_bytes=None))
    tampered = bytearray(mine.seal(0, encode_data(2, 0, 1, np.full(4, 9.0, np.float32))))
    tampered[-20] ^= 0x01
    for message in (
        first,
        first,  # replayed
        bytes(tampered),
        forger.seal(0, encode_data(2, 0, 1, np.full(4, 9.0, np.float32))),
        other_deployment.seal(0, encode_data(2, 0, 1, np.full(4, 9.0, np.float32))),
        bytes(encode_data(2, 0, 1, np.full(4, 9.0, np.float32))[0]),  # unsealed
        mine.seal(0, encode_data(2, 0, 1, np.full(4, 3.0, np.float32))),
    ):
        out.send(message)
    answers = []
    opener = Sealer(SealKeys.from_curve(1, pairs[1].secret, publics, b"dep-1"))
    fake_in.rcvtimeo = 10_000
    for _ in range(2):
        parts = fake_in.recv_multipart()
        answers.append(decode_data(opener.open(parts[1:])).tensor)
    thread.join(timeout=30)
    out.close(0)
    fake_in.close(0)
    context.term()
    assert not any(isinstance(r, Exception) for r in results), results
    np.testing.assert_array_equal(results[0], np.full(4, 3.0, np.float32))
    np.testing.assert_array_equal(results[1], np.full(4, 4.0, np.float32))  # not 10
    assert results[2] == 5  # replay, tampered, forged, other deployment, unsealed
    np.testing.assert_array_equal(answers[0], np.full(4, 3.0, np.float32))
    np.testing.assert_array_equal(answers[1], np.full(4, 4.0, np.float32))


def test_each_refusal_is_a_typed_error_saying_why() -> None:
    secret = bytes(range(32))
    a = Sealer(SealKeys.shared(0, 3, secret, b"d"), cipher="aes-gcm")
    b = Sealer(SealKeys.shared(1, 3, secret, b"d"), cipher="chacha20-poly1305")
    c = Sealer(SealKeys.shared(2, 3, secret, b"d"))
    message = a.seal(1, [b"header", np.arange(3, dtype=np.float32)])
    assert [bytes(p) for p in b.open([message])] == [
        b"header", np.arange(3, dtype=np.float32).tobytes()]
    fresh = a.seal(1, [b"tamper me"])
    cases = {
        "replayed": lambda: b.open([message]),
        "for rank 1 arrived at rank 2": lambda: c.open([message]),
        "failed authentication": lambda: b.open([fresh[:-1] + bytes([fresh[-1] ^ 1])]),
        "one frame": lambda: b.open([message, b""]),
        "not a sealed": lambda: b.open([b"\x00" * 64]),
    }
    for why, call in cases.items():
        try:
            call()
        except DataAuthError as error:
            assert why in str(error), (why, error)
        else:
            raise AssertionError(f"{why}: accepted")
    # both ciphers are opened whatever the receiver sends with; late messages within the
    # replay window are accepted once, in any order
    later = [a.seal(1, [b"x%d" % i]) for i in range(5)]
    for sealed in (later[3], later[0], later[4], later[1]):
        b.open([sealed])
    try:
        b.open([later[0]])
    except DataAuthError as error:
        assert "replayed" in str(error)
    else:
        raise AssertionError("a reordered message was accepted twice")
    assert [bytes(p) for p in a.open([b.seal(0, [b"back"])])] == [b"back"]
    a.close()
    try:
        a.seal(1, [b"after close"])
    except DataAuthError as error:
        assert "dropped" in str(error)
    else:
        raise AssertionError("sealed after close")
