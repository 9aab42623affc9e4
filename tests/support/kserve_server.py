"""Serve ONNX models through KServe's real `kserve.ModelServer` (Open Inference
Protocol v2 over REST), so the `KServeV2` fallback is tested against the server it
targets rather than against our own reading of the protocol.

Run it with the separate virtualenv `.venv-kserve` (kserve pins its own FastAPI,
pydantic and uvicorn, which must not leak into the project's environment):

    .venv-kserve/bin/python tests/support/kserve_server.py PORT NAME=MODEL.onnx [...]

It listens on 127.0.0.1:PORT only (no gRPC) and serves each MODEL.onnx as NAME with
onnxruntime. Standalone on purpose: it imports nothing of the project, which is not
installed in that virtualenv. Arguments are positional because
kserve parses its own `--flags` from `sys.argv` when it is imported.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import kserve
import kserve.model_server
import numpy as np
import onnxruntime as ort
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from kserve.protocol.rest.server import RESTServer
from kserve.utils.numpy_codec import from_np_dtype

HOST = "127.0.0.1"


class LoopbackRESTServer(RESTServer):  # type: ignore[misc]
    """kserve's REST server, bound to loopback: kserve 0.21 hard-codes 0.0.0.0, and a
    test server must not be reachable from the network."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config.host = HOST


class OnnxModel(kserve.Model):  # type: ignore[misc]
    """A KServe model whose v2 `predict` runs one onnxruntime session."""

    def __init__(self, name: str, path: Path) -> None:
        super().__init__(name)
        self.path = path
        self.session: ort.InferenceSession | None = None
        self.output_names: list[str] = []

    def load(self) -> bool:
        self.session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.ready = True
        return True

    def predict(self, payload: InferRequest, headers: dict[str, str] | None = None,
                response_headers: dict[str, str] | None = None) -> InferResponse:
        # REST v2 reaches `predict` as a decoded `InferRequest` (dataplane.decode).
        if not isinstance(payload, InferRequest):
            raise InvalidInput("this model speaks the v2 protocol only (POST .../infer)")
        assert self.session is not None
        try:
            feeds = {tensor.name: tensor.as_numpy() for tensor in payload.inputs}
        except ValueError as error:  # shape × data length mismatch
            raise InvalidInput(f"bad input tensor: {error}") from error
        wanted = ([o.name for o in payload.request_outputs] if payload.request_outputs
                  else self.output_names)
        unknown = sorted(set(wanted) - set(self.output_names))
        if unknown:
            raise InvalidInput(f"unknown output(s) {unknown}; the model has {self.output_names}")
        try:
            values = self.session.run(wanted, feeds)
        except Exception as error:  # onnxruntime's errors are untyped; a bad input is a 400
            raise InvalidInput(f"onnxruntime refused the inputs: {error}") from error
        outputs = []
        for name, value in zip(wanted, values, strict=True):
            array = np.asarray(value)
            output = InferOutput(name=name, shape=list(array.shape),
                                 datatype=from_np_dtype(array.dtype))
            output.set_data_from_numpy(array, binary_data=False)
            outputs.append(output)
        return InferResponse(response_id=payload.id, model_name=self.name,
                             infer_outputs=outputs)


def main(argv: list[str]) -> None:
    if len(argv) < 2 or not argv[0].isdigit() or not all("=" in a for a in argv[1:]):
        sys.exit("usage: kserve_server.py PORT NAME=MODEL.onnx [NAME=MODEL.onnx ...]")
    port = int(argv[0])
    models = []
    for spec in argv[1:]:
        name, path = spec.split("=", 1)
        model = OnnxModel(name, Path(path))
        model.load()
        models.append(model)
    kserve.model_server.RESTServer = LoopbackRESTServer  # ModelServer.start builds it by name
    kserve.ModelServer(http_port=port, enable_grpc=False, workers=1, grace_period=1,
                       enable_latency_logging=False).start(models)


if __name__ == "__main__":
    main(sys.argv[1:])
