"""A quick stage runs on the agent's control loop; a slow one never blocks it.

A real agent process and a raw ZeroMQ client on its ROUTER: requests to a stage that
computes in well under `INLINE_MAX_S` are answered in order and equal onnxruntime; while
a stage that takes longer computes, a ping sent after two requests is answered before
either result (the loop handed them to the stage's worker and went on serving).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq

import edge_runtime as er
from edge_runtime.agent.stage import INLINE_MAX_S
from edge_runtime.bench.pipeline import build_matmul_model
from edge_runtime.protocol import Ping, Run
from support.onnx_models import run_model
from transports.wire import decode, encode


@pytest.fixture(scope="module")
def cluster() -> Iterator[er.LocalCluster]:
    with er.local_cluster(1, insecure=True, log_level="WARNING") as local:
        yield local


def frames_in_order(sock: zmq.Socket[bytes], count: int) -> list[tuple[str, int, dict]]:
    got = []
    for _ in range(count):
        assert sock.poll(30_000), f"only {len(got)} of {count} answers"
        frame = decode(sock.recv_multipart())
        got.append((frame.kind, frame.request_id, frame.tensors))
    return got


def client(cluster: er.LocalCluster) -> zmq.Socket[bytes]:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(cluster.processes[0].address)
    return sock


def run_frame(deployment: er.Deployment, request_id: int, x: np.ndarray) -> list:
    run = Run(deployment.specs[0].deployment_id, time.time())
    return encode(run.frame(request_id, tensors={"x": x}))


def test_quick_requests_are_answered_in_order_and_right(cluster: er.LocalCluster,
                                                        tmp_path: Path) -> None:
    model = build_matmul_model(tmp_path / "quick.onnx", layers=2, rows=8, width=32)
    deployment = cluster.deploy(model, strategy="single")
    sock = client(cluster)
    try:
        inputs = [np.random.default_rng(i).standard_normal((8, 32)).astype(np.float32)
                  for i in range(20)]
        for i, x in enumerate(inputs):
            sock.send_multipart(run_frame(deployment, 100 + i, x))
        answers = frames_in_order(sock, len(inputs))
        assert [rid for _, rid, _ in answers] == [100 + i for i in range(len(inputs))]
        for (kind, _, tensors), x in zip(answers, inputs, strict=True):
            assert kind == "result"
            np.testing.assert_allclose(tensors["y"], run_model(model, {"x": x})["y"],
                                       rtol=1e-5, atol=1e-5)
        status = next(iter(deployment.status().values()))
        assert status["served"] == len(inputs)  # every one computed once
    finally:
        sock.close()
        deployment.unload()


def test_a_slow_stage_leaves_the_loop_free_for_pings(cluster: er.LocalCluster,
                                                     tmp_path: Path) -> None:
    model = build_matmul_model(tmp_path / "slow.onnx", layers=24, rows=1024, width=512)
    deployment = cluster.deploy(model, strategy="single")
    x = np.ones((1024, 512), dtype=np.float32)
    sock = client(cluster)
    try:  # measured once: far slower than INLINE_MAX_S
        assert deployment.run({"x": x}).compute_s > 2 * INLINE_MAX_S
        sock.send_multipart(run_frame(deployment, 1, x))
        sock.send_multipart(run_frame(deployment, 2, x))
        sock.send_multipart(encode(Ping().frame(3)))
        order = [(kind, rid) for kind, rid, _ in frames_in_order(sock, 3)]
        assert order == [("reply", 3), ("result", 1), ("result", 2)], order
    finally:
        sock.close()
        deployment.unload()
