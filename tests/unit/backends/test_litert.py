"""The LiteRT backend runs real `.tflite` files (built in tests) and matches numpy."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np
import pytest

import support.tflite_models as tm
from edge_runtime.backends.base import Backend
from edge_runtime.backends.litert import LiteRTBackend, litert_runtime, open_litert
from edge_runtime.errors import ConfigError, DeployError, InputError
from edge_runtime.protocol import TensorSpec


@pytest.fixture
def fc(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((4, 3)).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    path = tm.fully_connected_model(
        tmp_path / "fc.tflite", weights, bias, relu=True, dynamic_batch=True
    )
    return path, weights, bias


def test_runtime_is_ai_edge_litert() -> None:
    # NumPy 2 is installed, so the maintained runtime must be the one chosen.
    assert litert_runtime() == "ai-edge-litert"


def test_fully_connected_matches_numpy_and_reports_specs(
    fc: tuple[Path, np.ndarray, np.ndarray],
) -> None:
    path, weights, bias = fc
    backend: Backend = open_litert(path, threads=1)
    assert backend.inputs == (TensorSpec("x", "float32", (None, 3)),)
    assert backend.outputs == (TensorSpec("y", "float32", (None, 4)),)
    x = np.random.default_rng(1).standard_normal((1, 3)).astype(np.float32)
    out = backend.run({"x": x})
    assert set(out) == {"y"}
    np.testing.assert_allclose(
        out["y"], np.maximum(x @ weights.T + bias, 0.0), rtol=1e-5, atol=1e-6
    )
    backend.close()


def test_dynamic_batch_resizes_both_ways(fc: tuple[Path, np.ndarray, np.ndarray]) -> None:
    path, weights, bias = fc
    backend = LiteRTBackend(path, threads=2)
    rng = np.random.default_rng(2)
    for batch in (5, 1, 7, 7):
        x = rng.standard_normal((batch, 3)).astype(np.float32)
        y = backend.run({"x": x})["y"]
        assert y.shape == (batch, 4)
        np.testing.assert_allclose(y, np.maximum(x @ weights.T + bias, 0.0), rtol=1e-5, atol=1e-6)


def test_two_input_int_add(tmp_path: Path) -> None:
    backend = LiteRTBackend(tm.add_model(tmp_path / "add.tflite", shape=(2, 3), dtype="int32"))
    assert [s.name for s in backend.inputs] == ["a", "b"]
    assert backend.outputs == (TensorSpec("sum", "int32", (2, 3)),)
    a = np.arange(6, dtype=np.int32).reshape(2, 3)
    b = np.full((2, 3), 10, dtype=np.int32)
    np.testing.assert_array_equal(backend.run({"a": a, "b": b})["sum"], a + b)


def test_outputs_are_copies_that_survive_the_next_run(tmp_path: Path) -> None:
    backend = LiteRTBackend(tm.add_model(tmp_path / "add.tflite"))
    ones = np.ones((2, 3), np.float32)
    first = backend.run({"a": ones, "b": ones})["sum"]
    backend.run({"a": ones * 5, "b": ones})
    np.testing.assert_array_equal(first, ones * 2)


@pytest.mark.parametrize(
    ("feeds", "message"),
    [
        ({}, "missing ['x']"),
        ({"x": np.zeros((1, 3), np.float32), "z": np.zeros(1, np.float32)}, "unexpected ['z']"),
        ({"x": np.zeros((1, 3), np.float64)}, "float64[1, 3]"),
        ({"x": np.zeros((1, 5), np.float32)}, "Expected x: float32[?, 3]"),
        ({"x": np.zeros(3, np.float32)}, "float32[3]"),
        ({"x": [[0.0, 0.0, 0.0]]}, "numpy array"),
    ],
)
def test_bad_inputs_are_typed_errors_and_the_backend_keeps_working(
    fc: tuple[Path, np.ndarray, np.ndarray], feeds: dict[str, np.ndarray], message: str
) -> None:
    path, weights, bias = fc
    backend = LiteRTBackend(path)
    with pytest.raises(InputError, match=re.escape(message)):
        backend.run(feeds)
    x = np.ones((1, 3), np.float32)
    np.testing.assert_allclose(
        backend.run({"x": x})["y"], np.maximum(x @ weights.T + bias, 0), rtol=1e-5
    )


def test_missing_corrupt_and_closed_models(
    tmp_path: Path, fc: tuple[Path, np.ndarray, np.ndarray]
) -> None:
    with pytest.raises(DeployError, match=r"no \.tflite model"):
        LiteRTBackend(tmp_path / "absent.tflite")
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"\x00" * 64 + b"not a flatbuffer")
    with pytest.raises(DeployError, match=r"could not load junk\.tflite"):
        LiteRTBackend(junk)
    with pytest.raises(ConfigError, match="threads"):
        LiteRTBackend(fc[0], threads=0)
    backend = LiteRTBackend(fc[0])
    backend.close()
    with pytest.raises(DeployError, match="unloaded"):
        backend.run({"x": np.ones((1, 3), np.float32)})


def test_concurrent_runs_do_not_mix_results(fc: tuple[Path, np.ndarray, np.ndarray]) -> None:
    path, weights, bias = fc
    backend = LiteRTBackend(path, threads=1)
    errors: list[str] = []

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(50):
            batch = int(rng.integers(1, 4))
            x = rng.standard_normal((batch, 3)).astype(np.float32)
            y = backend.run({"x": x})["y"]
            if not np.allclose(y, np.maximum(x @ weights.T + bias, 0), rtol=1e-5, atol=1e-6):
                errors.append(f"seed {seed}: wrong result")

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
