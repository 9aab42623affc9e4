"""Issue 9's findings, each through real agent processes: hostile messages, restarts,
slow loads, dead and paused coordinators. Nothing a peer sends may crash, hang or
exhaust an agent; a busy agent is never taken for dead; deployments have leases."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq

import edge_runtime as er
from edge_runtime.errors import AgentUnavailableError, MemoryBudgetError
from edge_runtime.protocol import Hello, Join, Peer, ProbeLink, Status, StatusReply
from edge_runtime.protocol import kinds as k
from edge_runtime.sdk.config import Timeouts
from edge_runtime.sdk.hub import Hub
from support.cluster import assert_outputs_equal, reference
from support.hostile import (
    ask,
    header,
    long_command_header,
    raw_dealer,
    rss_bytes,
    stream_until_closed,
    zmtp_greeting,
)
from support.onnx_models import mlp_chain, random_feeds
from transports.handshake import HandshakeStatus, HandshakeWatch
from transports.keys import KeyPair, generate_keypair, init_keys, trust
from transports.security import Security
from transports.sockets import open_client
from transports.wire import decode, encode

TESTS_DIR = Path(__file__).resolve().parents[2]
MB = 1 << 20


def _pid(local: er.LocalCluster, index: int = 0) -> int:
    process = local.processes[index].process
    assert process is not None
    return process.pid


PROBE_TIMEOUT_S = 0.5


@pytest.fixture(scope="module")
def insecure_agent() -> Iterator[er.LocalCluster]:
    # the agent's probe timeout comes from its environment (AgentTimeouts), as a user sets it
    os.environ["EDGE_RUNTIME_AGENT_PROBE_TIMEOUT_S"] = str(PROBE_TIMEOUT_S)
    try:
        cluster = er.local_cluster(1, insecure=True)
        local = cluster.__enter__()
    finally:
        del os.environ["EDGE_RUNTIME_AGENT_PROBE_TIMEOUT_S"]
    try:
        yield local
    finally:
        cluster.__exit__(None, None, None)


# --- finding 1: one small message must not kill an agent ---

@pytest.mark.parametrize("shape", [[0, 2**64 - 1], [2**40, 2**40, 0], [2**63, 0], [-1, 0]])
def test_crash_shapes_earn_a_protocol_error(insecure_agent: er.LocalCluster,
                                            shape: list[int]) -> None:
    with raw_dealer(insecure_agent.agents[0].address) as sock:
        message = header(k.PING, 7, tensors=[["x", "float32", shape, 0, None]])
        assert len(message) < 80
        answer = ask(sock, [message, b""])
    assert answer.is_error and answer.meta["error_type"] == "ProtocolError"
    assert answer.request_id == 7
    assert insecure_agent.processes[0].alive()
    assert insecure_agent.status()["agent0"]["available"]


# --- finding 3: memory exhaustion before authentication and from tiny messages ---

def test_integer_client_field_is_refused_without_allocating(
        insecure_agent: er.LocalCluster) -> None:
    pid = _pid(insecure_agent)
    before = rss_bytes(pid)
    with raw_dealer(insecure_agent.agents[0].address) as sock:
        meta = {"deployment_id": "d", "client": 200_000_000, "timings": []}
        answer = ask(sock, [header(k.ACTIVATION, 9, meta)])
    assert answer.is_error and answer.meta["error_type"] == "ProtocolError"
    assert len(answer.meta["message"]) < 2000
    assert rss_bytes(pid) - before < 50 * MB
    assert insecure_agent.status()["agent0"]["available"]


def test_oversized_frame_is_dropped_before_it_is_buffered(
        insecure_agent: er.LocalCluster) -> None:
    """A peer declaring a frame over the limit is cut off after the frame header."""
    pid = _pid(insecure_agent)
    before = rss_bytes(pid)
    address = insecure_agent.agents[0].address
    # NULL mechanism: greeting, then a message frame header declaring 1 GiB
    sent = stream_until_closed(address, zmtp_greeting(b"NULL") + long_command_header(1 << 30),
                               total=512 * MB)
    assert sent < 128 * MB, f"the agent kept reading {sent} bytes of an oversized frame"
    assert rss_bytes(pid) - before < 64 * MB
    assert insecure_agent.status()["agent0"]["available"]


def test_unauthenticated_handshake_cannot_make_a_curve_agent_buffer() -> None:
    with er.local_cluster(1) as local:
        pid = _pid(local)
        before = rss_bytes(pid)
        prefix = zmtp_greeting(b"CURVE") + long_command_header(1 << 30)
        sent = [stream_until_closed(local.agents[0].address, prefix, total=256 * MB)
                for _ in range(3)]
        assert max(sent) < 128 * MB, sent
        assert rss_bytes(pid) - before < 64 * MB
        assert local.status()["agent0"]["available"]


# --- the whole vocabulary, fuzzed against a live agent ---

FUZZ_KINDS = [kind for kind in vars(k).values()
              if isinstance(kind, str) and kind.islower() and kind not in
              {k.SHUTDOWN, k.PROBE_LINK, k.ERROR, k.REPLY, k.RESULT, "a/", "o/"}]


SENTINEL_ID = 10_001  # after the fuzzed messages' request ids 1..10,000


def _junk(rng: np.random.Generator, depth: int = 0) -> object:
    choice = int(rng.integers(0, 9 if depth < 3 else 6))
    if choice == 0:
        return int(rng.integers(-(2**63), 2**63 - 1))
    if choice == 1:
        return [2**64 - 1, -1, 0, 2**40][int(rng.integers(0, 4))]
    if choice == 2:
        return "".join(chr(int(c)) for c in rng.integers(32, 0x3000, int(rng.integers(0, 12))))
    if choice == 3:
        return bytes(rng.integers(0, 256, int(rng.integers(0, 40)), dtype=np.uint8))
    if choice == 4:
        return [None, True, 1.5, float("nan"), float("inf")][int(rng.integers(0, 5))]
    if choice == 5:
        return "d" if rng.random() < 0.5 else "agent0"
    if choice == 6:
        return [_junk(rng, depth + 1) for _ in range(int(rng.integers(0, 4)))]
    keys = ["deployment_id", "session", "client", "spec", "type", "peers", "shards", "sha256",
            "offset", "total", "name", "timings", "lease_s", "deployment_ids", "x"]
    return {str(keys[int(rng.integers(0, len(keys)))]): _junk(rng, depth + 1)
            for _ in range(int(rng.integers(0, 5)))}


def test_ten_thousand_fuzzed_messages_leave_the_agent_serving(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    with er.local_cluster(1, insecure=True) as local:
        address = local.agents[0].address
        answered = 0
        deadline = time.monotonic() + 120
        with raw_dealer(address) as sock:
            for i in range(10_000):
                kind = FUZZ_KINDS[int(rng.integers(0, len(FUZZ_KINDS)))]
                roll = rng.random()
                if roll < 0.1:
                    parts = [bytes(rng.integers(0, 256, int(rng.integers(0, 64)), np.uint8))]
                else:
                    meta = _junk(rng, 2) if roll < 0.2 else {
                        key: _junk(rng, 1) for key in
                        ("deployment_id", "session", "client", "spec", "shards")[
                            : int(rng.integers(0, 6))]}
                    tensors = []
                    frames: list[bytes] = []
                    if rng.random() < 0.3:
                        dims = [[0, 1, 3, 2**40, 2**64 - 1][int(j)]
                                for j in rng.integers(0, 5, int(rng.integers(0, 4)))]
                        tensors = [["data", ["uint8", "float32", "bool", "x"][i % 4], dims,
                                    int(rng.integers(0, 16)), None]]
                        frames = [bytes(int(rng.integers(0, 16)))]
                    parts = [header(kind, i + 1, meta, tensors), *frames]
                sock.send_multipart(parts)
                while sock.poll(0):
                    sock.recv_multipart()
                    answered += 1
                assert time.monotonic() < deadline, "fuzzing took too long"
            # a last ping after the flood: once its answer is in, so are (nearly) all others,
            # however slowly a busy machine let the agent work through them
            sock.send_multipart([header(k.PING, SENTINEL_ID)])
            seen_sentinel = False
            while sock.poll(30_000 if not seen_sentinel else 2000):
                seen_sentinel |= decode(sock.recv_multipart()).request_id == SENTINEL_ID
                answered += 1
            assert seen_sentinel, "the agent stopped answering"
        assert answered >= 9_000  # nearly every message is answered with an error
        assert local.processes[0].alive()
        small = mlp_chain(tmp_path / "mlp.onnx", seed=3)
        model = local.deploy(small, strategy="single")
        feeds = random_feeds(small, batch=2)
        assert_outputs_equal(model.run(feeds).outputs, reference(small, feeds))


# --- finding 2: a planned restart of the middle agent must freeze nothing ---

def test_restart_of_the_middle_agent_then_a_new_deployment_works(tmp_path: Path) -> None:
    model_path = mlp_chain(tmp_path / "chain.onnx", layers=6, width=512, seed=4)
    feeds = random_feeds(model_path, batch=2)
    want = reference(model_path, feeds)
    fast = Timeouts(request_s=10.0, heartbeat_interval_s=0.25, heartbeat_timeout_s=2.0)
    with er.local_cluster(3, memory_budgets=["2.5MB"] * 3, timeouts=fast) as local:
        first = local.deploy(model_path, strategy="pipeline")
        assert len({stage.device for stage in first.plan.stages}) == 3, first.plan.stages
        assert_outputs_equal(first.run(feeds).outputs, want, atol=0.05)  # sums reach ~3000
        middle = first.plan.stages[1].device
        index = next(p.index for p in local.processes if p.name == middle)
        local.restart(index)  # SIGTERM, same port and keys, as systemd's Restart= would
        start = time.monotonic()
        # the middle agent forgot the deployment: it says so, and the deployment places
        # itself again over the three agents and answers
        assert_outputs_equal(first.run(feeds).outputs, want, atol=0.05)
        assert first.failovers == 1
        assert time.monotonic() - start < fast.request_s
        # nothing froze: every agent answers at once, the upstream one included (a frozen
        # one would hold a request until it times out; a busy CI machine may be slow)
        start = time.monotonic()
        assert all(row["available"] for row in local.status().values())
        assert time.monotonic() - start < fast.request_s / 2
        first.unload()  # frees the agents' budgets
        second = local.deploy(model_path, strategy="pipeline")
        start = time.monotonic()
        assert_outputs_equal(second.run(feeds).outputs, want, atol=0.05)
        assert time.monotonic() - start < 5.0


# --- finding 5: slow work on the control loop must not look like death ---

def test_large_load_by_one_coordinator_does_not_kill_another_ones_stream(
        tmp_path: Path) -> None:
    big = mlp_chain(tmp_path / "big.onnx", layers=3, width=4096, seed=5)  # 192 MiB
    small = mlp_chain(tmp_path / "small.onnx", seed=6)
    strict = Timeouts(request_s=20.0, heartbeat_interval_s=0.2, heartbeat_timeout_s=1.0)
    with er.local_cluster(1, insecure=True) as local:
        address = local.agents[0].address
        with er.connect([address], insecure=True, timeouts=strict) as other:
            stream_model = other.deploy(small, strategy="single")
            feeds = random_feeds(small, batch=1)
            want = reference(small, feeds)
            took: list[float] = []
            errors: list[BaseException] = []

            def deploy_big() -> None:
                start = time.monotonic()
                try:
                    local.deploy(big, strategy="single")
                except BaseException as error:  # reported by the main thread
                    errors.append(error)
                took.append(time.monotonic() - start)

            loader = threading.Thread(target=deploy_big)
            loader.start()
            served = 0
            while loader.is_alive():
                assert_outputs_equal(stream_model.run(feeds).outputs, want)
                served += 1
            loader.join()
            assert not errors, errors
            assert took[0] > strict.heartbeat_timeout_s  # the load was long enough to matter
            assert served > 0


# --- leases: a dead or paused coordinator's deployments are reclaimed ---

def _child(address: str, model: Path, lease_s: float) -> subprocess.Popen[str]:
    env = {**os.environ, "EDGE_RUNTIME_LEASE_S": str(lease_s),
           "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-m", "support.coordinator_child", address,
                              str(model)], env=env, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line.startswith("deployed"), line
    return child


def test_killed_coordinator_is_reclaimed_within_its_lease(tmp_path: Path) -> None:
    big = mlp_chain(tmp_path / "big.onnx", layers=2, width=4096, seed=7)  # 128 MiB
    lease_s = 3.0
    with er.local_cluster(1, insecure=True, memory_budgets=["200MB"]) as local:
        pid = _pid(local)
        idle_rss = rss_bytes(pid)
        child = _child(local.agents[0].address, big, lease_s)
        assert rss_bytes(pid) - idle_rss > 100 * MB
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write("stream\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "streaming"
        time.sleep(0.5)
        child.kill()  # mid-stream: no unload, no goodbye
        child.wait()
        killed_at = time.monotonic()
        row = local.status()["agent0"]
        assert row["deployments"] and row["memory_used"] > 100e6  # the orphan holds the budget
        deadline = killed_at + lease_s + 5.0
        while local.status()["agent0"]["deployments"]:
            assert time.monotonic() < deadline, "the orphaned deployment was not reclaimed"
            time.sleep(0.2)
        assert time.monotonic() - killed_at < lease_s + 3.0
        assert local.status()["agent0"]["memory_used"] == 0
        # its memory goes back to the OS once the unload (on the agent's loads lane) ends
        deadline = time.monotonic() + 10.0
        while rss_bytes(pid) - idle_rss >= 64 * MB:
            assert time.monotonic() < deadline, f"RSS still {rss_bytes(pid) - idle_rss} above idle"
            time.sleep(0.2)
        model = local.deploy(big, strategy="single")  # the next user fits
        feeds = {"x": np.ones((1, 4096), np.float32)}
        assert_outputs_equal(model.run(feeds).outputs, reference(big, feeds), atol=1e-3)
        with pytest.raises(MemoryBudgetError):  # and holds the budget in turn
            local.deploy(big, strategy="single")


def test_paused_coordinator_is_told_its_deployment_is_gone_and_places_it_again(
        tmp_path: Path) -> None:
    small = mlp_chain(tmp_path / "small.onnx", seed=8)
    lease_s = 1.5
    with er.local_cluster(1, insecure=True) as local:
        child = _child(local.agents[0].address, small, lease_s)
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write("run\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "ok"
        child.send_signal(signal.SIGSTOP)  # a closed laptop lid
        paused_at = time.monotonic()
        while local.status()["agent0"]["deployments"]:  # the agent sweeps it once it lapses
            assert time.monotonic() - paused_at < lease_s + 15.0, "the lease never lapsed"
            time.sleep(0.2)
        child.send_signal(signal.SIGCONT)
        child.stdin.write("run\n")
        child.stdin.flush()
        answer = child.stdout.readline().split()
        child.stdin.write("quit\n")
        child.stdin.flush()
        child.wait(timeout=20)
        # the agent answered "gone (lease lapsed)"; the deployment placed itself again
        assert answer == ["ok"], answer
        assert "lease lapsed" in local.processes[0].tail(200)


def test_a_coordinator_that_renews_keeps_its_deployment_while_idle(tmp_path: Path) -> None:
    small = mlp_chain(tmp_path / "small.onnx", seed=10)
    # 2 s, not the 1 s minimum: a renewal every 0.67 s leaves a loaded machine room
    lease = Timeouts(lease_s=2.0)
    with er.local_cluster(1, insecure=True, timeouts=lease) as local:
        model = local.deploy(small, strategy="single")
        time.sleep(3 * lease.lease_s)  # three leases without a request: the keeper renews
        feeds = random_feeds(small, batch=1)
        assert_outputs_equal(model.run(feeds).outputs, reference(small, feeds))
        assert local.agents[0].name in local.status()


def test_agent_declared_unavailable_is_available_again_when_it_answers() -> None:
    fast = Timeouts(request_s=5.0, heartbeat_interval_s=0.2, heartbeat_timeout_s=0.8)
    with er.local_cluster(1, insecure=True, timeouts=fast) as local:
        proc = local.processes[0]
        assert proc.process is not None
        local.link("agent0").alive = None  # as for connect(): no process handle
        proc.process.send_signal(signal.SIGSTOP)
        try:
            start = time.monotonic()
            with pytest.raises(AgentUnavailableError, match=r"paused or hung|silent"):
                local.call("agent0", Status(), StatusReply, timeout_s=5.0)
            assert time.monotonic() - start < 3.0
        finally:
            proc.process.send_signal(signal.SIGCONT)
        assert local.status()["agent0"]["available"]


def test_probes_to_a_dead_address_neither_block_the_loop_nor_pile_up(
        insecure_agent: er.LocalCluster) -> None:
    """23 probes to an address nothing answers once froze an agent for 114 s."""
    probe = ProbeLink(address="tcp://127.0.0.1:1", public_key=None, name="nowhere")
    with raw_dealer(insecure_agent.agents[0].address) as sock:
        for i in range(23):
            sock.send_multipart(encode(probe.frame(1000 + i)))
        start = time.monotonic()
        assert insecure_agent.status()["agent0"]["available"]  # the loop answers at once
        assert time.monotonic() - start < 3.0  # not the 23 × 0.5 s the probes take
        kinds: list[str] = []
        # the probe running and those queued each wait PROBE_TIMEOUT_S, the rest are refused
        deadline = time.monotonic() + 30
        while len(kinds) < 23 and time.monotonic() < deadline:
            if sock.poll(1000):
                reply = decode(sock.recv_multipart())
                kinds.append(str(reply.meta.get("error_type")))
    assert len(kinds) == 23  # every probe answered, none lost
    # the backlog is bounded: beyond the running probe and `probe_queue` waiting ones the
    # agent refuses at once (23 - 1 - 8 = 14 when all arrive within one probe's time)
    assert kinds.count("AgentBusyError") >= 5
    assert kinds.count("AgentUnavailableError") <= 23 - 5
    assert set(kinds) <= {"AgentBusyError", "AgentUnavailableError"}


def _handshake(address: str, keys: KeyPair, server_key: str) -> HandshakeStatus:
    """How a fresh CURVE connection with `keys` to the agent ends: CONNECTED or refused."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = open_client(context, Security(keypair=keys), address, server_key, connect=False)
    watch = HandshakeWatch(sock)
    sock.connect(address)
    try:
        deadline = time.monotonic() + 10
        while (state := watch.poll()).status not in (HandshakeStatus.CONNECTED,
                                                     HandshakeStatus.KEY_REFUSED):
            assert time.monotonic() < deadline, state
            time.sleep(0.01)
        return state.status
    finally:
        watch.close()
        sock.close(linger=0)
        context.term()


def test_keys_a_session_introduced_are_revoked_when_its_lease_lapses(tmp_path: Path) -> None:
    with er.local_cluster(1) as local:
        info, proc = local.agents[0], local.processes[0]
        assert info.public_key is not None and proc.keys_dir is not None
        app = init_keys(tmp_path / "app")
        trust(proc.keys_dir, app.public, "app")  # a second app this agent trusts
        peer = generate_keypair()  # an agent that app vouches for, trusted by nobody
        assert _handshake(info.address, peer, info.public_key) is HandshakeStatus.KEY_REFUSED
        hub = Hub(Security(keypair=app), Timeouts(lease_s=1.0))
        try:
            link = hub.connect(info.address, info.public_key, "agent0")
            hello = Hello(hub.session, 1.0)
            assert not hub.request(link, hello.KIND, hello.to_meta()).is_error
            join = Join(hub.session, (Peer("peer", peer.public.decode()),), 1.0)
            assert not hub.request(link, join.KIND, join.to_meta()).is_error
            assert _handshake(info.address, peer, info.public_key) is HandshakeStatus.CONNECTED
            hub.leases.close()  # the app stops renewing, as if it had crashed
            deadline = time.monotonic() + 10
            while _handshake(info.address, peer, info.public_key) is HandshakeStatus.CONNECTED:
                assert time.monotonic() < deadline, "the introduced key was never revoked"
                time.sleep(0.3)
        finally:
            hub.close()
        assert local.status()["agent0"]["available"]  # the cluster's own session lives on
