"""Shared by the fallback tests: KServe's real ModelServer as a subprocess, and the
`ModelInfo` a deployment hands its fallbacks, read from an ONNX file."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx
import pytest

from edge_runtime.protocol import TensorSpec
from edge_runtime.sdk.fallback.targets import ModelInfo
from partitioner.plan import sha256_file
from support.onnx_models import REPO

KSERVE_PYTHON = REPO / ".venv-kserve" / "bin" / "python"
KSERVE_SERVER = REPO / "tests" / "support" / "kserve_server.py"
SERVER_START_S = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def kserve_server(models: Mapping[str, Path], log_path: Path) -> Iterator[int]:
    """KServe's ModelServer serving `models` (name -> .onnx) over v2 REST on a free
    loopback port; yields the port once /v2/health/ready answers, stops it after."""
    if not KSERVE_PYTHON.exists():
        pytest.fail(f"{KSERVE_PYTHON} is missing: run `make .venv-kserve/.installed` "
                    "(KServe lives in its own virtualenv)")
    port = free_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(KSERVE_PYTHON), str(KSERVE_SERVER), str(port),
             *(f"{name}={path}" for name, path in models.items())],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"the KServe server exited with {process.returncode}:\n"
                            f"{log_path.read_text(errors='replace')[-3000:]}")
            try:
                url = f"http://127.0.0.1:{port}/v2/health/ready"
                with urllib.request.urlopen(url, timeout=1) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the KServe server was not ready within {SERVER_START_S:g} s:\n"
                            f"{log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def model_info(path: Path) -> ModelInfo:
    """What the deployment hands its fallbacks: the model's signature, read from the file."""
    graph = onnx.load(str(path)).graph
    weights = {init.name for init in graph.initializer}
    inputs = tuple(
        TensorSpec(v.name, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(
            v.type.tensor_type.elem_type)).name,
            tuple(d.dim_value if d.HasField("dim_value") else None
                  for d in v.type.tensor_type.shape.dim))
        for v in graph.input if v.name not in weights)
    return ModelInfo(path, sha256_file(path), path.stem, inputs,
                     tuple(v.name for v in graph.output))
