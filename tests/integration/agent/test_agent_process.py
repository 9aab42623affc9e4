"""One real agent process: shard cache, integrity, memory budget, security, lifecycle."""

from __future__ import annotations

import hashlib
import shlex
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq

import edge_runtime as er
from edge_runtime.errors import (
    MemoryBudgetError,
    ShardIntegrityError,
)
from edge_runtime.protocol import (
    HasShards,
    HasShardsReply,
    Hello,
    PutChunk,
    PutChunkReply,
    ShardRef,
)
from edge_runtime.protocol import kinds as p
from edge_runtime.sdk.config import Timeouts
from edge_runtime.sdk.hub import Hub
from support.cluster import DIGITS_MODEL, assert_outputs_equal, digits_inputs, reference
from support.onnx_models import mlp_chain, random_feeds
from transports.errors import SecurityError
from transports.keys import generate_keypair
from transports.security import Security
from transports.wire import Frame, decode, encode

# digits_exits.onnx as one stage (exits=[]) needs ~2.1 MB as planned: one copy
# fits, a second does not. The small MLP needs a few tens of kB.
BUDGET = "3MB"


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[er.LocalCluster]:
    cache = tmp_path_factory.mktemp("agent-cache")
    with er.local_cluster(1, memory_budgets=[BUDGET], cache_dirs=[cache]) as local:
        yield local


def test_memory_budget_refuses_and_agent_keeps_serving(agent: er.LocalCluster,
                                                       tmp_path: Path) -> None:
    first = agent.deploy(DIGITS_MODEL, strategy="single", exits=[])
    held = agent.status()["agent0"]["deployments"]
    assert len(first.plan.stages) == 1
    # the planner does not know what the agent already holds: the agent refuses
    with pytest.raises(MemoryBudgetError, match=r"memory budget") as caught:
        agent.deploy(DIGITS_MODEL, strategy="single", exits=[])
    assert "agent0" in str(caught.value)
    assert agent.status()["agent0"]["deployments"].keys() == held.keys()
    feeds = digits_inputs(1)
    assert_outputs_equal(first.run(feeds).outputs, reference(DIGITS_MODEL, feeds))
    first.unload()
    small = mlp_chain(tmp_path / "mlp.onnx")
    model = agent.deploy(small, strategy="single")
    feeds = random_feeds(small, batch=2)
    assert_outputs_equal(model.run(feeds).outputs, reference(small, feeds))
    model.unload()


def test_shard_corrupted_in_transit_is_refused(agent: er.LocalCluster) -> None:
    data = np.frombuffer(b"not the bytes that were announced", dtype=np.uint8)
    claimed = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(ShardIntegrityError, match="tampered"):
        agent.call("agent0", PutChunk(claimed, ".onnx", 0, int(data.size)), PutChunkReply,
                   {"data": data})
    missing = agent.call("agent0", HasShards((ShardRef(claimed, ".onnx"),)), HasShardsReply).missing
    assert missing == (claimed,)  # nothing was published under that digest


def test_shard_tampered_on_disk_is_refused_then_resent(agent: er.LocalCluster,
                                                        tmp_path: Path) -> None:
    small = mlp_chain(tmp_path / "mlp.onnx", seed=11)
    first = agent.deploy(small, strategy="single")
    first.unload()
    cached = agent.processes[0].cache_dir / "shards" / f"{first.plan.stages[0].shard_sha256}.onnx"
    assert cached.is_file()
    blob = bytearray(cached.read_bytes())
    blob[-1] ^= 0xFF
    cached.write_bytes(bytes(blob))
    with pytest.raises(ShardIntegrityError, match="changed after upload"):
        agent.deploy(small, strategy="single")
    again = agent.deploy(small, strategy="single")  # the agent dropped it: sent afresh
    assert again.bytes_sent > 0
    feeds = random_feeds(small, batch=1)
    assert_outputs_equal(again.run(feeds).outputs, reference(small, feeds))
    again.unload()


def test_restarted_agent_reuses_its_cache(agent: er.LocalCluster, tmp_path: Path) -> None:
    small = mlp_chain(tmp_path / "mlp.onnx", seed=12)
    first = agent.deploy(small, strategy="single")
    assert first.bytes_sent > 0
    first.unload()
    old_pid = agent.processes[0].process.pid  # type: ignore[union-attr]
    agent.restart(0)
    assert agent.processes[0].process.pid != old_pid  # type: ignore[union-attr]
    second = agent.deploy(small, strategy="single")
    assert second.bytes_sent == 0
    feeds = random_feeds(small, batch=3)
    assert_outputs_equal(second.run(feeds).outputs, reference(small, feeds))
    second.unload()


def _raw_request(address: str, security: Security, server_key: str | None,
                 kind: str, wait_s: float) -> Frame | None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    security.apply_client(sock, None if server_key is None else server_key.encode())
    sock.connect(address)
    sock.send_multipart(encode(Frame(kind=kind, request_id=1)))
    answer = decode(sock.recv_multipart()) if sock.poll(int(wait_s * 1000)) else None
    sock.close()
    context.term()
    return answer


def test_unkeyed_or_wrongly_keyed_clients_are_refused(agent: er.LocalCluster) -> None:
    info = agent.agents[0]
    assert info.public_key is not None
    stranger = Security(keypair=generate_keypair())
    # a wrongly-keyed client's shutdown is not acted on, and it gets no answer
    assert _raw_request(info.address, stranger, info.public_key, p.SHUTDOWN, 1.0) is None
    # a client without CURVE gets no answer either
    assert _raw_request(info.address, Security(insecure=True), None, p.SHUTDOWN, 1.0) is None
    # the SDK reports a refused handshake at once, with the exact command that fixes it
    hub = Hub(stranger, Timeouts(hello_s=10.0))
    try:
        link = hub.connect(info.address, info.public_key, "agent0")
        start = time.monotonic()
        with pytest.raises(SecurityError, match="does not trust this machine's key") as caught:
            hub.request(link, p.HELLO, Hello(hub.session, 30.0).to_meta())
        assert time.monotonic() - start < 2.0
        assert stranger.keypair is not None
        command = str(caught.value).split("run: ", 1)[1]
        assert shlex.split(command)[-1] == stranger.keypair.public.decode()  # pastes as is
    finally:
        hub.close()
    assert agent.processes[0].alive()
    assert agent.status()["agent0"]["available"]


def test_sigterm_shuts_down_cleanly(agent: er.LocalCluster) -> None:
    model = agent.deploy(mlp_chain(Path(agent.session_dir) / "m.onnx", seed=13),
                         strategy="single")
    proc = agent.processes[0]
    start = time.monotonic()
    proc.stop()
    assert proc.process is not None and proc.process.returncode == 0
    assert time.monotonic() - start < 5.0
    assert "stopping" in proc.tail()
    del model
    agent.restart(0)  # leave the module's agent running for later tests
    assert agent.status()["agent0"]["available"]


def test_digits_runs_when_the_budget_allows(tmp_path: Path) -> None:
    with er.local_cluster(1, memory_budgets=["64MB"]) as local:
        model = local.deploy(DIGITS_MODEL, strategy="single")
        feeds = digits_inputs(2)
        assert_outputs_equal(model.run(feeds).outputs, reference(DIGITS_MODEL, feeds))
        status = local.status()["agent0"]
        assert status["memory_budget"] == 64_000_000
        assert 0 < status["memory_used"] <= 64_000_000


def test_connect_with_a_keys_directory(agent: er.LocalCluster, tmp_path: Path) -> None:
    from transports.errors import SecurityError
    from transports.keys import init_keys, trust

    info, proc = agent.agents[0], agent.processes[0]
    keys = tmp_path / "keys"
    mine = init_keys(keys)
    with pytest.raises(SecurityError, match="keys trust"):
        er.connect([info.address], keys=keys)  # the agent's key is not trusted here yet
    assert info.public_key is not None and proc.keys_dir is not None
    trust(keys, info.public_key, "agent0", address=info.address)
    trust(proc.keys_dir, mine.public, "second-app")  # the agent trusts us (re-read live)
    with er.connect([info.address], keys=keys) as remote:
        assert remote.agents[0].public_key == info.public_key
        small = mlp_chain(tmp_path / "mlp.onnx", seed=21)
        model = remote.deploy(small, strategy="single")
        feeds = random_feeds(small, batch=2)
        assert_outputs_equal(model.run(feeds).outputs, reference(small, feeds))
    assert agent.status()["agent0"]["deployments"] == {}  # closing unloaded it
    assert proc.alive()  # and left the agent running


def test_insecure_cluster_runs_a_pipeline() -> None:
    with er.local_cluster(2, insecure=True) as local:
        assert all(info.public_key is None for info in local.agents)
        # garbage and unknown requests get typed error answers; the agent keeps serving
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(local.agents[0].address)
        sock.send_multipart([b"\xc1 not msgpack", b"junk"])
        assert sock.poll(5000)
        assert decode(sock.recv_multipart()).meta["error_type"] == "ProtocolError"
        sock.send_multipart(encode(Frame(kind="launch_missiles", request_id=3)))
        assert sock.poll(5000)
        reply = decode(sock.recv_multipart())
        assert reply.meta["error_type"] == "ProtocolError"  # an unknown kind is malformed
        assert "launch_missiles" in reply.meta["message"]
        sock.close()
        context.term()
        model = local.deploy(DIGITS_MODEL, strategy="pipeline")
        feeds = digits_inputs(2)
        assert_outputs_equal(model.run(feeds).outputs, reference(DIGITS_MODEL, feeds))
