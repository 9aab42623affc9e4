"""`KServeV2`: a pipeline fallback served by any Open Inference Protocol (KServe v2) server.

KServe, Triton, Seldon MLServer, OpenVINO Model Server and TorchServe all speak the
v2 REST protocol, so one small client reaches whichever the app runs in its cloud
(or on a box on the LAN). It uses the standard library only (`urllib.request`):
a fallback must not add a dependency to every device that ships the SDK.

Tensors travel in the protocol's JSON form (`{"name", "shape", "datatype", "data"}`
with `data` flattened row-major). Floats survive the trip exactly: a float32 is
written as the shortest decimal that reads back to the same double, hence the same
float32. The JSON form cannot carry NaN or infinities (refused here, before sending),
and KServe takes fp16 tensors only in its binary extension (its HTTP 400 is passed on).

Every failure a server or network can cause is a `FallbackError` naming this target:
HTTP errors with their status and the server's own `error` text (clipped), timeouts,
refused connections, and answers that are not the v2 JSON they claim to be.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edge_runtime.errors import ConfigError, FallbackError
from edge_runtime.sdk.fallback.targets import Answer, ModelInfo

log = logging.getLogger(__name__)

# numpy dtype name <-> v2 datatype (the protocol's tensor data types; BYTES is not
# carried: the SDK's models take numeric tensors only).
_TO_V2: dict[str, str] = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
}
_FROM_V2: dict[str, str] = {v: k for k, v in _TO_V2.items()}

# The most of an error body quoted in a message, and of a response read at all: a
# misbehaving server must neither flood logs nor exhaust this device's memory.
ERROR_TEXT_CHARS = 300
MAX_RESPONSE_BYTES = 1 << 30


def to_v2_datatype(dtype: np.dtype[Any]) -> str:
    """The v2 datatype of a numpy dtype (`FP32` for float32, ...); `FallbackError` if none."""
    v2 = _TO_V2.get(np.dtype(dtype).name)
    if v2 is None:
        raise FallbackError(f"numpy dtype {np.dtype(dtype).name} has no v2 protocol datatype; "
                            f"send one of {sorted(_TO_V2)}")
    return v2


def from_v2_datatype(datatype: str) -> np.dtype[Any]:
    """The numpy dtype of a v2 datatype; `FallbackError` for one this client cannot read."""
    name = _FROM_V2.get(datatype)
    if name is None:
        raise FallbackError(f"datatype {datatype!r} is not a numeric v2 datatype "
                            f"({sorted(_FROM_V2)})")
    return np.dtype(name)


def encode_tensor(name: str, value: np.ndarray) -> dict[str, Any]:
    """One input tensor in the v2 JSON form (data flattened row-major)."""
    array = np.ascontiguousarray(value)
    datatype = to_v2_datatype(array.dtype)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise FallbackError(f"input {name!r} holds NaN or infinity, which the v2 JSON "
                            "encoding cannot carry")
    return {"name": name, "shape": list(array.shape), "datatype": datatype,
            "data": array.ravel().tolist()}


def decode_tensor(entry: Any) -> tuple[str, np.ndarray]:
    """(name, array) of one output in the v2 JSON form, checked: name, datatype, shape
    and that the data holds exactly prod(shape) elements."""
    if not isinstance(entry, Mapping):
        raise FallbackError(f"an output is a {type(entry).__name__}, not a JSON object")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise FallbackError("an output has no name")
    shape = entry.get("shape")
    if (not isinstance(shape, list)
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                       for d in shape)):
        raise FallbackError(f"output {name!r} has shape {str(shape)[:80]}, not a list of "
                            "non-negative integers")
    dtype = from_v2_datatype(str(entry.get("datatype")))
    data = entry.get("data")
    if not isinstance(data, list):
        raise FallbackError(f"output {name!r} has no JSON 'data' list (binary outputs are "
                            "not supported; do not ask the server for binary_data)")
    try:
        flat = np.asarray(data, dtype=dtype).ravel()
    except (TypeError, ValueError) as error:
        raise FallbackError(f"output {name!r}: data is not {dtype.name} numbers ({error})"
                            ) from error
    expected = math.prod(shape)
    if flat.size != expected:
        raise FallbackError(f"output {name!r} has {flat.size} values for shape {shape} "
                            f"({expected})")
    return name, flat.reshape(shape)


def _redacted(url: str) -> str:
    """`url` without user:password, for names and messages."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _error_text(body: bytes) -> str:
    """The server's `error` field if the body is v2 JSON, else the body as text; clipped."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, Mapping) and "error" in parsed:
        text = str(parsed["error"])
    if len(text) > ERROR_TEXT_CHARS:
        text = text[:ERROR_TEXT_CHARS] + "…"
    return text or "(empty body)"


class KServeV2:
    """A model served over the Open Inference Protocol (KServe v2 REST).

    `url`: the server's base address (``https://host:8443``; a trailing ``/v2`` is
    accepted). `model`/`version`: the served model. `headers`: sent with every request
    (``{"Authorization": "Bearer ..."}``); never shown in names or messages.
    `timeout_s`: the longest wait on any one socket operation, also capped per call
    by `infer`'s `timeout_s`. `outputs`: the outputs to ask for (default: the deployed
    model's final outputs, `ModelInfo.outputs`). `cloud`: False for a server on the
    LAN, so a policy that keeps requests off the cloud may still use it.
    """

    def __init__(self, url: str, model: str, *, version: str | None = None,
                 headers: Mapping[str, str] | None = None, timeout_s: float = 30.0,
                 outputs: Sequence[str] | None = None, cloud: bool = True) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"KServeV2 url must be http(s)://host[:port][/path], got "
                              f"{_redacted(url)!r}")
        if not model:
            raise ConfigError("KServeV2 needs the name of the served model (model=...)")
        if timeout_s <= 0:
            raise ConfigError(f"timeout_s must be positive, got {timeout_s}")
        base = url.rstrip("/")
        self._base = base[: -len("/v2")] if base.endswith("/v2") else base
        self.url = _redacted(url)
        self.model = model
        self.version = version
        self.timeout_s = float(timeout_s)
        self.outputs = tuple(outputs) if outputs is not None else None
        self._headers = {"Content-Type": "application/json", "Accept": "application/json",
                         **dict(headers or {})}
        self._cloud = cloud
        quoted = urllib.parse.quote(model, safe="")
        self._model_path = f"{self._base}/v2/models/{quoted}" + (
            f"/versions/{urllib.parse.quote(version, safe='')}" if version else "")

    @property
    def name(self) -> str:
        return f"kserve:{self.model}@{self.url}"

    @property
    def cloud(self) -> bool:
        return self._cloud

    def infer(self, model: ModelInfo, inputs: Mapping[str, np.ndarray],
              timeout_s: float) -> Answer:
        """One inference on the server; the outputs asked for, checked, as numpy arrays."""
        try:
            wanted = self.outputs if self.outputs is not None else model.outputs
            request_id = uuid.uuid4().hex
            body: dict[str, Any] = {
                "id": request_id,
                "inputs": [encode_tensor(name, np.asarray(value))
                           for name, value in inputs.items()],
            }
            if wanted:
                body["outputs"] = [{"name": name} for name in wanted]
            payload = json.dumps(body, allow_nan=False).encode()
            reply = self._call("POST", f"{self._model_path}/infer", payload,
                               min(self.timeout_s, timeout_s))
            outputs = self._outputs(reply, request_id, wanted)
        except FallbackError as error:
            raise FallbackError(str(error), target=self.name) from error
        return Answer(outputs=outputs, served_by=self.name)

    def ready(self, timeout_s: float | None = None) -> bool:
        """Whether the server says the model is ready (GET .../ready answers 200)."""
        try:
            self._call("GET", f"{self._model_path}/ready", None,
                       self.timeout_s if timeout_s is None else timeout_s)
        except FallbackError as error:
            log.info("%s is not ready: %s", self.name, error)
            return False
        return True

    def close(self) -> None:
        """Nothing to release: every request opens and closes its own connection."""

    # ---- internals --------------------------------------------------------------------

    def _call(self, method: str, url: str, payload: bytes | None, timeout_s: float) -> bytes:
        request = urllib.request.Request(url, data=payload, method=method,
                                         headers=self._headers)
        where = f"{method} {_redacted(url)}"
        try:
            with urllib.request.urlopen(request, timeout=max(timeout_s, 1e-3)) as response:
                body: bytes = response.read(MAX_RESPONSE_BYTES + 1)
        except urllib.error.HTTPError as error:
            text = _error_text(error.read(64 * 1024) if error.fp is not None else b"")
            hint = (f"; does the server serve a model named {self.model!r}"
                    + (f" version {self.version!r}" if self.version else "") + "?"
                    if error.code == 404 else "")
            raise FallbackError(f"{where} answered HTTP {error.code}: {text}{hint}") from error
        except urllib.error.URLError as error:
            raise self._network_error(where, error.reason, timeout_s) from error
        except (OSError, http.client.HTTPException) as error:  # timeouts, resets, bad status
            raise self._network_error(where, error, timeout_s) from error
        if len(body) > MAX_RESPONSE_BYTES:
            raise FallbackError(f"{where} answered more than {MAX_RESPONSE_BYTES} bytes")
        return body

    def _network_error(self, where: str, reason: object, timeout_s: float) -> FallbackError:
        if isinstance(reason, TimeoutError):
            return FallbackError(f"{where}: no answer within {timeout_s:g} s")
        if isinstance(reason, ConnectionRefusedError):
            return FallbackError(f"{where}: connection refused; is the server running at "
                                 f"{self.url}?")
        return FallbackError(f"{where} failed: {reason}")

    def _outputs(self, body: bytes, request_id: str,
                 wanted: Sequence[str]) -> dict[str, np.ndarray]:
        try:
            reply = json.loads(body)
        except ValueError as error:
            raise FallbackError(f"the server answered malformed JSON ({error}): "
                                f"{_error_text(body)}") from error
        if not isinstance(reply, Mapping) or not isinstance(reply.get("outputs"), list):
            raise FallbackError(f"the server's answer has no 'outputs' list: {_error_text(body)}")
        answered = reply.get("id")
        if answered not in (None, "", request_id):
            raise FallbackError(f"the server answered request {str(answered)[:64]!r}, "
                                f"not {request_id!r}")
        outputs: dict[str, np.ndarray] = {}
        for entry in reply["outputs"]:
            name, array = decode_tensor(entry)
            if name in outputs:
                raise FallbackError(f"the server answered output {name!r} twice")
            outputs[name] = array
        missing = [name for name in wanted if name not in outputs]
        if missing:
            raise FallbackError(f"the server's answer lacks output(s) {missing}; it has "
                                f"{sorted(outputs)} (set KServeV2(outputs=...) to the served "
                                "model's names)")
        if wanted:
            outputs = {name: outputs[name] for name in wanted}
        return outputs


__all__ = ["KServeV2", "decode_tensor", "encode_tensor", "from_v2_datatype", "to_v2_datatype"]
