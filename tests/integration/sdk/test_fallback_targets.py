"""The remote pipeline fallbacks against real servers: `KServeV2` against KServe's own
`ModelServer` (a subprocess in `.venv-kserve`), `RemoteAgent` against a real agent
process. Answers must equal the whole model in a plain onnxruntime session; every
failure (unknown model, server down, silent server, malformed answers, agent gone)
must be a `FallbackError` naming the target, and quickly.

The failure cases that KServe cannot be made to produce (a silent server, malformed
JSON, a wrong shape) are played by small real servers on loopback sockets.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx
import pytest

import edge_runtime as er
from edge_runtime.errors import FallbackError
from edge_runtime.sdk.config import Timeouts
from edge_runtime.sdk.fallback.kserve import KServeV2
from edge_runtime.sdk.fallback.remote_agent import RemoteAgent
from edge_runtime.sdk.fallback.targets import PipelineFallback
from support.fallback_servers import free_port, kserve_server, model_info
from support.onnx_models import exits_mlp, mlp_chain, random_feeds, run_model


def assert_matches(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        assert got[name].dtype == value.dtype and got[name].shape == value.shape, name
        np.testing.assert_allclose(got[name], value, rtol=1e-6, atol=1e-7, err_msg=name)


DTYPES = ("bool", "uint8", "int8", "int32", "int64", "float32", "float64")


def identities(path: Path) -> Path:
    """One input and one output per dtype of `DTYPES` (out_T = in_T + in_T, OR for bool)."""
    nodes, inputs, outputs = [], [], []
    for name in DTYPES:
        elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(name))
        inputs.append(onnx.helper.make_tensor_value_info(f"in_{name}", elem, ["n", 3]))
        outputs.append(onnx.helper.make_tensor_value_info(f"out_{name}", elem, ["n", 3]))
        nodes.append(onnx.helper.make_node("Or" if name == "bool" else "Add",
                                           [f"in_{name}", f"in_{name}"], [f"out_{name}"]))
    graph = onnx.helper.make_graph(nodes, "identities", inputs, outputs)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fallback_models")
    return {"mlp": mlp_chain(root / "mlp.onnx"), "exits": exits_mlp(root / "exits.onnx"),
            "dtypes": identities(root / "dtypes.onnx")}


@pytest.fixture(scope="module")
def kserve_url(models: dict[str, Path],
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """KServe's ModelServer serving the models over v2 REST on a free loopback port."""
    with kserve_server(models, tmp_path_factory.mktemp("kserve") / "server.log") as port:
        yield f"http://127.0.0.1:{port}"


# ---- KServeV2 against KServe --------------------------------------------------------


def test_kserve_answers_equal_onnxruntime(kserve_url: str, models: dict[str, Path]) -> None:
    target = KServeV2(kserve_url, "mlp")
    assert isinstance(target, PipelineFallback)
    assert (target.name, target.cloud) == (f"kserve:mlp@{kserve_url}", True)
    assert KServeV2(kserve_url + "/v2", "mlp", cloud=False).cloud is False
    assert target.ready() and not KServeV2(kserve_url, "nope").ready()
    for batch in (1, 5):
        feeds = random_feeds(models["mlp"], batch=batch, seed=batch)
        answer = target.infer(model_info(models["mlp"]), feeds, timeout_s=10.0)
        assert (answer.served_by, answer.degraded, answer.exit) == (target.name, False, None)
        assert_matches(answer.outputs, run_model(models["mlp"], feeds))


def test_kserve_returns_the_outputs_asked_for(kserve_url: str, models: dict[str, Path]) -> None:
    info = model_info(models["exits"])
    feeds = random_feeds(models["exits"], batch=3)
    want = run_model(models["exits"], feeds)
    every = KServeV2(kserve_url, "exits").infer(info, feeds, timeout_s=10.0)
    assert_matches(every.outputs, want)  # default: the model's outputs, all three
    some = KServeV2(kserve_url, "exits", outputs=["exit2"]).infer(info, feeds, timeout_s=10.0)
    assert_matches(some.outputs, {"exit2": want["exit2"]})


def test_kserve_carries_every_numeric_dtype(kserve_url: str, models: dict[str, Path]) -> None:
    """Each dtype maps to its v2 datatype and back (values at the edges of their range)."""
    rng = np.random.default_rng(0)
    feeds = {f"in_{name}": (rng.random((2, 3)) > 0.5 if name == "bool" else
                            (rng.random((2, 3)) * 40 - 20).astype(name)
                            if np.dtype(name).kind == "f" else
                            rng.integers(0, 100, (2, 3)).astype(name))
             for name in DTYPES}
    feeds["in_int64"][0, 0] = 2**61 + 1  # beyond float64's exact integers
    info = model_info(models["dtypes"])
    target = KServeV2(kserve_url, "dtypes")
    answer = target.infer(info, feeds, timeout_s=10.0)
    assert_matches(answer.outputs, run_model(models["dtypes"], feeds))
    # KServe takes fp16 in its binary extension only: the client says what the server said
    half = {"x": random_feeds(models["mlp"], 1)["x"].astype(np.float16)}
    with pytest.raises(FallbackError, match=r"HTTP 400: Sending FP16 data via JSON"):
        KServeV2(kserve_url, "mlp").infer(model_info(models["mlp"]), half, timeout_s=10.0)
    with pytest.raises(FallbackError, match="NaN or infinity"):
        target.infer(info, {**feeds, "in_float64": np.full((2, 3), np.nan)}, timeout_s=10.0)
    with pytest.raises(FallbackError, match="complex128 has no v2 protocol datatype"):
        target.infer(info, {**feeds, "in_float64": np.ones((2, 3), complex)}, timeout_s=10.0)


def test_kserve_errors_say_what_the_server_said(kserve_url: str,
                                                models: dict[str, Path]) -> None:
    info = model_info(models["mlp"])
    feeds = random_feeds(models["mlp"], batch=2)
    unknown = KServeV2(kserve_url, "nope")
    with pytest.raises(FallbackError, match=r"HTTP 404: Model with name nope does not exist"
                       ) as caught:
        unknown.infer(info, feeds, timeout_s=10.0)
    assert caught.value.target == unknown.name
    assert str(caught.value).startswith(f"{unknown.name}: ")
    with pytest.raises(FallbackError, match=r"HTTP 400: .*unknown output"):
        KServeV2(kserve_url, "mlp", outputs=["z"]).infer(info, feeds, timeout_s=10.0)
    with pytest.raises(FallbackError, match=r"HTTP 501: Model versioning not supported"):
        KServeV2(kserve_url, "mlp", version="2").infer(info, feeds, timeout_s=10.0)


def test_kserve_down_fails_fast(models: dict[str, Path]) -> None:
    target = KServeV2(f"http://127.0.0.1:{free_port()}", "mlp")
    start = time.monotonic()
    with pytest.raises(FallbackError, match="connection refused"):
        target.infer(model_info(models["mlp"]), random_feeds(models["mlp"], 1), timeout_s=10.0)
    assert time.monotonic() - start < 1.0
    assert not target.ready(timeout_s=1.0)


def test_kserve_silent_server_times_out(models: dict[str, Path]) -> None:
    """A server that accepts the connection and never answers."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        target = KServeV2(f"http://127.0.0.1:{silent.getsockname()[1]}", "mlp")
        start = time.monotonic()
        with pytest.raises(FallbackError, match=r"no answer within 0.5 s"):
            target.infer(model_info(models["mlp"]), random_feeds(models["mlp"], 1),
                         timeout_s=0.5)
        assert time.monotonic() - start < 2.0


class _Canned(http.server.BaseHTTPRequestHandler):
    """Answers every POST with the body its path names (see `BODIES`)."""

    BODIES: ClassVar[dict[str, bytes]] = {}

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        body = self.BODIES[self.path.split("/")[3]].replace(b"$ID", request["id"].encode())
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


_Canned.BODIES = {
    "html": b"<html>proxy says hello</html>",
    "short": b'{"id": "$ID", "outputs": [{"name": "y", "shape": [1, 32], "datatype": "FP32",'
             b' "data": [1.0, 2.0, 3.0]}]}',
    "renamed": b'{"id": "$ID", "outputs": [{"name": "q", "shape": [1], "datatype": "FP32",'
               b' "data": [1.0]}]}',
    "strings": b'{"id": "$ID", "outputs": [{"name": "y", "shape": [1], "datatype": "BYTES",'
               b' "data": ["a"]}]}',
    "other_id": b'{"id": "someone-else", "outputs": []}',
}


@pytest.mark.parametrize(("model", "message"), [
    ("html", r"malformed JSON .*proxy says hello"),
    ("short", r"output 'y' has 3 values for shape \[1, 32\] \(32\)"),
    ("renamed", r"lacks output\(s\) \['y'\]; it has \['q'\]"),
    ("strings", r"datatype 'BYTES' is not a numeric v2 datatype"),
    ("other_id", r"answered request 'someone-else'"),
])
def test_kserve_malformed_answers_are_refused(models: dict[str, Path], model: str,
                                              message: str) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Canned)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        target = KServeV2(f"http://127.0.0.1:{server.server_address[1]}", model)
        with pytest.raises(FallbackError, match=message):
            target.infer(model_info(models["mlp"]), random_feeds(models["mlp"], 1),
                         timeout_s=5.0)
    finally:
        server.shutdown()
        server.server_close()


# ---- RemoteAgent against a real agent -----------------------------------------------


def test_remote_agent_answers_equal_onnxruntime_then_fails_when_gone(
        models: dict[str, Path]) -> None:
    path = models["exits"]
    info = model_info(path)
    fast = Timeouts(hello_s=2.0, heartbeat_interval_s=0.2, heartbeat_timeout_s=1.0)
    with er.local_cluster(1) as local:
        agent = local.processes[0]
        remote = RemoteAgent(agent.address, keys=local.session_dir / "coordinator-keys",
                             server_key=agent.public_key, timeouts=fast)
        try:
            assert isinstance(remote, PipelineFallback)
            assert (remote.name, remote.cloud) == (f"agent:{agent.address}", True)
            for batch in (2, 3):  # the second reuses the connection and deployment
                feeds = random_feeds(path, batch=batch, seed=batch)
                answer = remote.infer(info, feeds, timeout_s=10.0)
                assert (answer.served_by, answer.degraded) == (remote.name, False)
                assert_matches(answer.outputs, run_model(path, feeds))
            agent.kill()
            start = time.monotonic()
            with pytest.raises(FallbackError) as caught:
                remote.infer(info, random_feeds(path, batch=1), timeout_s=10.0)
            assert caught.value.target == remote.name
            assert time.monotonic() - start < 5.0
        finally:
            remote.close()


def test_remote_agent_insecure_and_unreachable(models: dict[str, Path]) -> None:
    info = model_info(models["mlp"])
    feeds = random_feeds(models["mlp"], batch=2)
    with er.local_cluster(1, insecure=True) as local:
        remote = RemoteAgent(local.processes[0].address, insecure=True)
        try:
            assert_matches(remote.infer(info, feeds, timeout_s=10.0).outputs,
                           run_model(models["mlp"], feeds))
        finally:
            remote.close()
    nobody = RemoteAgent(f"tcp://127.0.0.1:{free_port()}", insecure=True,
                         timeouts=Timeouts(hello_s=1.0))
    start = time.monotonic()
    with pytest.raises(FallbackError) as caught:
        nobody.infer(info, feeds, timeout_s=5.0)
    assert caught.value.target == nobody.name
    assert time.monotonic() - start < 3.0
    nobody.close()
