"""No request lost, none answered twice: the resilience API end to end, with real faults.

Real agent processes (`local_cluster`), paused with SIGSTOP or killed with SIGKILL;
a real app process (`support.journal_app`) SIGKILLed mid-stream and resumed from its
journal by another; a real KServe v2 server (`.venv-kserve`) as the cloud fallback;
the tiny random Llama checkpoint as the LLM, served by the agents and then by this
process. Every answer, whoever served it, must equal plain onnxruntime (or the
uninterrupted greedy generation), and every request key must be answered once.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

import edge_runtime as er
from edge_runtime.errors import ClusterUnavailableError
from support.onnx_models import REPO, mlp_chain, run_model

FAST = er.Timeouts(heartbeat_interval_s=0.2, heartbeat_timeout_s=1.0, request_s=10.0,
                   hello_s=3.0, rejoin_backoff_s=0.2, rejoin_backoff_max_s=1.0, queue_s=20.0)
WIDTH = 32  # mlp_chain's input width
TESTS_DIR = Path(__file__).resolve().parents[2]
KSERVE_PYTHON = REPO / ".venv-kserve" / "bin" / "python"
KSERVE_SERVER = REPO / "tests" / "support" / "kserve_server.py"
SERVER_START_S = 60.0


def feeds(i: int) -> dict[str, np.ndarray]:
    """Input i of every stream here: a function of i alone, so any process can remake it."""
    return {"x": np.random.default_rng(i).standard_normal((1, WIDTH)).astype(np.float32)}


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


def test_queue_waits_out_a_paused_cluster_and_loses_nothing(mlp: Path) -> None:
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
            time.sleep(3.0)
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
        assert elapsed >= 3.0  # it really waited for the agents
        assert elapsed < FAST.queue_s, "answered by the cluster long after it came back"
        assert model.available and model.failovers >= 1
