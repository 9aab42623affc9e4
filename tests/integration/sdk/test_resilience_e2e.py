"""No request lost, none answered twice: the resilience API end to end, with real faults.

Real agent processes (`local_cluster`), paused with SIGSTOP or killed with SIGKILL;
a real app process (`support.journal_app`) SIGKILLed mid-stream and resumed from its
journal by another; a real KServe v2 server (`.venv-kserve`) as the cloud fallback;
the tiny random Llama checkpoint as the LLM, served by the agents and then by this
process. Every answer, whoever served it, must equal plain onnxruntime (or the
uninterrupted greedy generation), and every request key must be answered once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

import edge_runtime as er
import support.journal_app as journal_app
from edge_runtime.errors import ClusterUnavailableError
from edge_runtime.llm.engine import Generation, TokenEvent
from edge_runtime.sdk.journal import EntryState
from support.fallback_servers import kserve_server
from support.onnx_models import mlp_chain, run_model

FAST = er.Timeouts(heartbeat_interval_s=0.2, heartbeat_timeout_s=1.0, request_s=10.0,
                   hello_s=3.0, rejoin_backoff_s=0.2, rejoin_backoff_max_s=1.0, queue_s=20.0)
TESTS_DIR = Path(__file__).resolve().parents[2]


def feeds(i: int) -> dict[str, np.ndarray]:
    """Input i of every stream here: a function of i alone, so any process can remake it
    (the crashed app of test 4 uses the same function)."""
    return journal_app.inputs(i)


def assert_equal_outputs(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        assert got[name].dtype == value.dtype and got[name].shape == value.shape, name
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def kill_all(cluster: er.LocalCluster) -> None:
    for proc in cluster.processes:
        proc.kill()


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mlp_chain(tmp_path_factory.mktemp("resilience") / "mlp.onnx")


# ---- 1. every agent paused, policy "queue" ------------------------------------------


# Long enough for both agents to be declared lost one after the other (heartbeats,
# then the re-plan onto the other one fails too: ~3.5 s), so the cluster is away and
# the queue, not a failover, must wait; short enough to stay well inside queue_s.
PAUSE_S = 7.0


def test_queue_waits_out_a_paused_cluster_and_loses_nothing(
        mlp: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Both agents SIGSTOPped long enough to be declared lost (the cluster is away),
    then SIGCONTed: with "queue" every request waits and is answered by the cluster."""
    caplog.set_level(logging.INFO, logger="edge_runtime")
    policy = er.FallbackPolicy(when_away="queue")
    with er.local_cluster(2, timeouts=FAST, fallback=policy) as cluster:
        model = cluster.deploy(mlp, strategy="pipeline")
        assert len(model.agents) == 2
        model.run(feeds(0))  # warm: sessions loaded, links known
        pids = [p.process.pid for p in cluster.processes if p.process is not None]
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        resumed = threading.Event()

        def wake() -> None:
            time.sleep(PAUSE_S)
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
            resumed.set()

        waker = threading.Thread(target=wake, daemon=True)
        start = time.monotonic()
        waker.start()
        try:
            results = list(model.run_many((feeds(i) for i in range(20)), max_in_flight=4))
        finally:
            waker.join()
        elapsed = time.monotonic() - start
        assert resumed.is_set()
        assert len(results) == 20
        for i, result in enumerate(results):
            assert result.served_by == "cluster" and not result.fallback, (i, result.notes)
            assert_equal_outputs(result.outputs, run_model(mlp, feeds(i)))
        assert len({r.key for r in results}) == 20
        assert elapsed >= PAUSE_S  # it really waited for the agents
        assert elapsed < FAST.queue_s, "answered by the cluster long after it came back"
        assert model.available
        assert any(note.startswith("failover:") for note in results[0].notes)
        said = [r.getMessage() for r in caplog.records]
        assert any("cluster away" in m for m in said), said  # the queue really waited
        assert any("cluster back" in m for m in said), said
        # Both agents serve again once their backoff has run out: an agent that stayed
        # down through the outage was never "flapping", so it must not be banned.
        names = {p.name for p in cluster.processes}
        deadline = time.monotonic() + 4 * (FAST.rejoin_backoff_max_s + FAST.heartbeat_timeout_s)
        while set(model.agents) != names and time.monotonic() < deadline:
            time.sleep(0.2)
            assert_equal_outputs(model.run(feeds(1)).outputs, run_model(mlp, feeds(1)))
        assert cluster.health.summary() == dict.fromkeys(names, "up")
        assert set(model.agents) == names


# ---- 2. every agent killed, policy "fallback" ---------------------------------------


def test_fallback_answers_locally_and_resume_finishes_what_nothing_answered(
        mlp: Path, tmp_path: Path) -> None:
    with er.local_cluster(2, timeouts=FAST, fallback=["cluster", "local"],
                          journal=tmp_path / "requests.db") as cluster:
        model = cluster.deploy(mlp, strategy="pipeline")
        assert model.run(feeds(0)).served_by == "cluster"
        kill_all(cluster)
        for i in range(1, 6):
            time.sleep(0.3)  # the app goes on working while the agents stay down
            result = model.run(feeds(i), key=f"local-{i}")
            assert (result.served_by, result.fallback, result.degraded) == ("local", True, False)
            assert result.key == f"local-{i}"
            assert_equal_outputs(result.outputs, run_model(mlp, feeds(i)))
        assert not model.available and model.why_away.startswith("no agent is up")
        assert cluster.journal is not None
        assert cluster.journal.unfinished() == []  # all five were delivered

        # the cluster alone cannot answer: a typed error with its reason, kept journaled
        with pytest.raises(ClusterUnavailableError) as caught:
            model.run(feeds(6), key="stranded", fallback=["cluster"])
        message = str(caught.value)
        assert "cluster: no agent is up" in message, message
        assert all(p.name in message for p in cluster.processes), message
        assert "agent process exited" in message, message
        assert "stranded" in message  # where to find it again
        assert [e.key for e in cluster.journal.unfinished()] == ["stranded"]

        for index in range(len(cluster.processes)):
            cluster.restart(index)
        # each agent is back, or due to be knocked on by the next request (its backoff,
        # at most rejoin_backoff_max_s x 1.5, has run out)
        names = {p.name for p in cluster.processes}
        deadline = time.monotonic() + 2 * FAST.rejoin_backoff_max_s
        while (set(cluster.usable()) | set(cluster.health.due()) != names
               and time.monotonic() < deadline):
            time.sleep(0.05)
        resumed = cluster.resume()
        assert list(resumed.results) == ["stranded"] and resumed.skipped == {}
        answer = resumed.results["stranded"]
        assert isinstance(answer, er.Result)
        assert answer.served_by == "cluster", answer.notes  # the agents are back
        assert_equal_outputs(answer.outputs, run_model(mlp, feeds(6)))
        entry = cluster.journal.get("stranded")
        assert entry is not None and entry.state is EntryState.DELIVERED
        again = cluster.resume()
        assert again.results == {} and again.skipped == {}
        assert cluster.journal.unfinished() == []


# ---- 3. privacy: the cloud only when allowed ----------------------------------------


class CountingRelay:
    """A TCP relay on loopback in front of a server that counts the connections made to
    it: proof of whether a client contacted the server at all."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.connections = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                self.connections += 1
            server = socket.create_connection(self.upstream)
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def count(self) -> int:
        with self._lock:
            return self.connections

    def close(self) -> None:
        self.listener.close()


@pytest.fixture(scope="module")
def kserve(mlp: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CountingRelay]:
    """KServe's real ModelServer (`support/kserve_server.py` in `.venv-kserve`) serving
    the mlp as "mlp", behind a relay that counts who contacts it."""
    log_path = tmp_path_factory.mktemp("kserve") / "server.log"
    with kserve_server({"mlp": mlp}, log_path) as port:
        relay = CountingRelay(port)
        try:
            yield relay
        finally:
            relay.close()


def test_cloud_fallback_is_never_contacted_unless_allowed(
        mlp: Path, kserve: CountingRelay) -> None:
    cloud = er.KServeV2(f"http://127.0.0.1:{kserve.port}", "mlp")
    assert cloud.cloud
    private = er.FallbackPolicy(chain=("cluster", cloud), allow_cloud=False)
    with er.local_cluster(2, timeouts=FAST, fallback=private) as cluster:
        model = cluster.deploy(mlp, strategy="pipeline")
        assert model.run(feeds(0)).served_by == "cluster"
        kill_all(cluster)
        with pytest.raises(ClusterUnavailableError) as caught:
            model.run(feeds(1))
        assert "cluster: no agent is up" in str(caught.value)
        assert cloud.name not in str(caught.value)  # not even tried
        assert kserve.count() == 0  # not a single connection left this device

        allowed = er.FallbackPolicy(chain=("cluster", cloud), allow_cloud=True)
        for i in (2, 3):
            result = model.run(feeds(i), fallback=allowed)
            assert result.served_by.startswith("kserve:") and result.served_by == cloud.name
            assert result.fallback and not result.degraded
            assert_equal_outputs(result.outputs, run_model(mlp, feeds(i)))
        assert kserve.count() >= 1


# ---- 4. the app crashes; another process resumes its journal ------------------------


N_REQUESTS = 60
PRINTED_BEFORE_KILL = 20


def _journal_states(path: Path) -> dict[str, str]:
    """key -> state, straight from the SQLite file (what the crash left)."""
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT key, state FROM entries"))


def test_crashed_app_is_resumed_each_request_once(mlp: Path, tmp_path: Path) -> None:
    journal = tmp_path / "app.db"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    app_log = tmp_path / "app.log"
    with er.local_cluster(2, insecure=True, timeouts=FAST) as agents, app_log.open("w") as log:
        addresses = [p.address for p in agents.processes]
        app = subprocess.Popen(
            [sys.executable, "-m", "support.journal_app", str(journal), str(mlp),
             str(N_REQUESTS), "0.05", *addresses],
            env=env, stdout=subprocess.PIPE, stderr=log, text=True)
        watchdog = threading.Timer(60.0, app.kill)  # a hung app ends its stdout: no hang here
        watchdog.start()
        printed: list[str] = []
        try:
            assert app.stdout is not None
            assert app.stdout.readline() == "deployed\n", app_log.read_text()[-3000:]
            while len(printed) < PRINTED_BEFORE_KILL:
                line = app.stdout.readline()
                assert line and line != "done\n", f"the app ended: {app_log.read_text()[-3000:]}"
                printed.append(line.strip())
            app.send_signal(signal.SIGKILL)
            assert app.wait(10) == -signal.SIGKILL
            printed += [line.strip() for line in app.stdout.read().splitlines()]
        finally:
            watchdog.cancel()
            if app.poll() is None:
                app.kill()
                app.wait()
        assert "done" not in printed
        assert printed == [journal_app.key(i) for i in range(len(printed))]  # in order
        assert len(printed) < N_REQUESTS

        left = _journal_states(journal)
        delivered = {k for k, state in left.items() if state == EntryState.DELIVERED.value}
        unfinished = {k for k, state in left.items()
                      if state in (EntryState.PENDING.value, EntryState.ANSWERED.value)}
        assert set(printed) <= delivered
        # the SDK marks an entry delivered just before handing it over: at most the one
        # being handed over when the kill came was delivered and not printed
        assert len(delivered - set(printed)) <= 1
        assert unfinished, "nothing was in flight when the app was killed"
        assert delivered | unfinished == set(left)  # nothing failed
        opened = len(left)
        assert set(left) == {journal_app.key(i) for i in range(opened)}  # opened in order

        with er.connect(addresses, insecure=True, timeouts=FAST, journal=journal) as again:
            again.deploy(mlp, strategy="pipeline")
            resumed = again.resume()
            assert resumed.skipped == {}
            assert set(resumed.results) == unfinished
            assert not set(resumed.results) & set(printed)
            assert set(resumed.results) | delivered == set(left)
            for key, answer in resumed.results.items():
                assert isinstance(answer, er.Result)
                assert (answer.key, answer.served_by) == (key, "cluster")
                i = int(key.removeprefix("req-"))
                assert_equal_outputs(answer.outputs, run_model(mlp, feeds(i)))
            second = again.resume()
            assert second.results == {} and second.skipped == {}
        after = _journal_states(journal)
        assert set(after) == set(left)
        assert set(after.values()) == {EntryState.DELIVERED.value}


# ---- 5. an LLM falls back to the same checkpoint on this device ---------------------


PROMPT = [1, 5, 17, 42, 99, 7]
NEW_TOKENS = 8


def test_llm_falls_back_to_a_local_checkpoint_without_gap_or_duplicate(
        checkpoint: Callable[[str], Path]) -> None:
    llama = checkpoint("llama")  # no tokenizer: prompts are token ids
    local = er.LocalCheckpoint(llama, degraded=False)
    with er.local_cluster(2, timeouts=FAST, fallback=["cluster", local]) as cluster:
        llm = cluster.deploy_llm(llama, max_context=64)
        assert len(llm.agents) == 2
        want = llm.generate(PROMPT, NEW_TOKENS)
        assert isinstance(want, Generation)
        assert want.served_by == "cluster" and want.finish_reason == "length"
        assert len(want.token_ids) == NEW_TOKENS

        events: list[TokenEvent] = []
        stream = llm.generate(PROMPT, NEW_TOKENS, stream=True)
        assert not isinstance(stream, Generation)
        for event in stream:
            events.append(event)
            if len(events) == 3:
                kill_all(cluster)
        assert [e.index for e in events] == list(range(NEW_TOKENS))  # no gap, no duplicate
        assert tuple(e.token_id for e in events) == want.token_ids
        # the cluster made the tokens up to the kill (one more may have been computed
        # ahead of the one handed over), this device every one after
        servers = [e.served_by for e in events]
        by_cluster = servers.count("cluster")
        assert 3 <= by_cluster < NEW_TOKENS, servers
        assert servers == ["cluster"] * by_cluster + [local.name] * (NEW_TOKENS - by_cluster)
        assert not any(e.degraded for e in events)

        after = llm.generate(PROMPT, NEW_TOKENS)
        assert isinstance(after, Generation)
        assert after.served_by == local.name and after.served_by.startswith("local:")
        assert after.token_ids == want.token_ids and not after.degraded
