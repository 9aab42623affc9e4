"""An LLM group seals its collective traffic and shrugs off a hostile network.

Three real CURVE-keyed agents: the group's sockets are plain, every message sealed with
an AEAD under keys agreed from the agents' CURVE keys (`transports.sealing`). The plan
records the allreduce algorithm it chose per payload size from the measured links, and
the agents use it. A stranger then sends each agent's group listener unsealed junk,
messages sealed with its own key, and tampered copies, framed as the group's TCP links
frame them: every one is refused and counted, and the deployment's logits stay within
1e-3 of transformers."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import edge_runtime as er
from transports.datawire import encode_data
from transports.keys import generate_keypair
from transports.sealing import Sealer, SealKeys

IDS = (1, 5, 17, 33, 99, 150, 7, 8)


def _send_framed(address: str, message: bytes) -> None:
    """`message` as one frame of the group's TCP links (`transports.groupstream`: u32
    length of the rest, u16 part count, u32 per part, the parts), on a connection of
    its own, as a stranger on the network would."""
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    body = struct.pack("<HI", 1, len(message)) + message
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(struct.pack("<I", len(body)) + body)


def test_sealed_group_refuses_forgeries_and_keeps_serving(
    cluster: er.LocalCluster, checkpoint: Callable[[str], Path],
    reference: Callable[[str, tuple[int, ...]], np.ndarray],
) -> None:
    llm = cluster.deploy_llm(checkpoint("llama"), max_context=48)
    try:
        names = list(llm.agents)
        schedule = llm.plan.allreduce
        assert schedule and all(name in ("star", "ring", "all_to_all", "recursive_doubling")
                                for _, name in schedule)
        assert [upto for upto, _ in schedule] == sorted(upto for upto, _ in schedule)
        want = reference("llama", IDS)
        np.testing.assert_allclose(llm.logits(list(IDS)), want, atol=1e-3, rtol=0)
        status = llm.status()
        groups = [status[n]["collective"] for n in names]
        assert all(g["sealed"] and g["rejected"] == 0 for g in groups), groups

        stranger = generate_keypair()
        publics = [generate_keypair().public for _ in names]
        publics[1] = stranger.public
        forger = Sealer(SealKeys.from_curve(1, stranger.secret, publics, llm.id.encode()))
        sent = 0
        for rank, group in enumerate(groups):
            if rank == 1:
                continue
            junk = encode_data(1, 0, 1, np.ones(16, np.float32))[0]
            forged = forger.seal(rank, encode_data(10**6, 0, 1, np.ones(16, np.float32)))
            tampered = bytearray(forged)
            tampered[40] ^= 0xFF
            for message in (bytes(junk), forged, bytes(tampered), b"\x00" * 3):
                _send_framed(group["address"], message)
                sent += 1
        time.sleep(0.5)  # the listeners read them between steps
        np.testing.assert_allclose(llm.logits(list(IDS)), want, atol=1e-3, rtol=0)
        text = llm.generate(list(IDS), 4)
        assert text is not None
        status = llm.status()
        assert sum(status[n]["collective"]["rejected"] for n in names) == sent
    finally:
        llm.unload()
