"""Pure parts of the SDK and agent: sizes, input checks, wire records, error mapping, cache."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.agent.cache import ShardCache
from edge_runtime.errors import (
    AgentError,
    AgentUnavailableError,
    ConfigError,
    DeployError,
    InputError,
    MemoryBudgetError,
    ShardIntegrityError,
)
from edge_runtime.protocol import ExitRule, Hop, StageSpec, StageTiming, TensorSpec
from edge_runtime.sdk.errors_map import error_from_frame
from edge_runtime.sdk.inputs import check_inputs
from edge_runtime.units import parse_size
from transports.errors import ProtocolError
from transports.wire import error_frame

SIGNATURE = (TensorSpec("image", "float32", ("batch", 1, 8, 8)),)


@pytest.mark.parametrize(("text", "expected"), [
    ("512MB", 512_000_000), ("1GB", 1_000_000_000), ("1.5GiB", int(1.5 * 2**30)),
    ("2048", 2048), ("64 kib", 65536), (4096, 4096),
])
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "12XB", "-5MB", -1])
def test_parse_size_refuses_nonsense(text: str | int) -> None:
    with pytest.raises(ConfigError):
        parse_size(text)


def test_check_inputs_accepts_any_batch() -> None:
    for batch in (1, 7):
        x = np.zeros((batch, 1, 8, 8), np.float32)
        assert check_inputs(SIGNATURE, {"image": x})["image"] is x


@pytest.mark.parametrize(("inputs", "problem"), [
    ({"img": np.zeros((1, 1, 8, 8), np.float32)}, "missing ['image']"),
    ({"image": np.zeros((1, 8, 8), np.float32)}, "image is float32[1, 8, 8]"),
    ({"image": np.zeros((1, 1, 8, 9), np.float32)}, "image is float32[1, 1, 8, 9]"),
    ({"image": np.zeros((1, 1, 8, 8), np.int64)}, "image is int64[1, 1, 8, 8]"),
    ({"image": [[0.0]]}, "not a numpy array"),
])
def test_check_inputs_names_the_problem_and_the_signature(inputs: dict[str, object],
                                                          problem: str) -> None:
    with pytest.raises(InputError) as caught:
        check_inputs(SIGNATURE, inputs)
    assert problem in str(caught.value)
    assert "Expected image: float32[batch, 1, 8, 8]" in str(caught.value)


def test_stage_spec_round_trips_through_the_wire_form() -> None:
    spec = StageSpec(
        deployment_id="abc.1", stage=1, n_stages=3, shard_sha256="0" * 64, shard_ext=".onnx",
        inputs=("h",), forward=("h2", "x"), outputs=("exit1",),
        exit=ExitRule("exit1", "exit1", "max_prob", 0.9, ("exit0",)),
        next_hop=Hop("b", "tcp://127.0.0.1:1", "k" * 40, "abc.2"), memory_bytes=1234,
        signature=(TensorSpec("x", "float32", ("batch", 4)),), allow_keys=("k" * 40,),
    )
    assert StageSpec.from_meta(spec.to_meta()) == spec
    timing = StageTiming(2, "agent1", 0.001, 0.02, 0.0005, True, 1.7e9)
    assert StageTiming.from_meta(timing.to_meta()) == timing


def test_malformed_stage_spec_is_a_protocol_error_naming_the_field() -> None:
    with pytest.raises(ProtocolError, match=r"StageSpec.stage is missing"):
        StageSpec.from_meta({"deployment_id": "x"})


@pytest.mark.parametrize(("name", "cls"), [
    ("InputError", InputError), ("MemoryBudgetError", MemoryBudgetError),
    ("ShardIntegrityError", ShardIntegrityError), ("AgentUnavailableError", AgentUnavailableError),
    ("ZeroDivisionError", AgentError),
])
def test_error_frames_map_back_to_typed_errors(name: str, cls: type[Exception]) -> None:
    error = error_from_frame(error_frame(7, name, "it broke", details={"agent": "pi"}), "x")
    assert type(error) is cls
    assert "pi" in str(error) and "it broke" in str(error)


def test_cache_publishes_only_verified_chunks(tmp_path: Path) -> None:
    cache = ShardCache(tmp_path)
    blob = bytes(range(256)) * 10
    digest = hashlib.sha256(blob).hexdigest()
    assert cache.missing([(digest, ".onnx")]) == [digest]
    assert cache.put_chunk(digest, ".onnx", 0, len(blob), blob[:1000]) is False
    with pytest.raises(DeployError, match="offset"):
        cache.put_chunk(digest, ".onnx", 2000, len(blob), blob[2000:])
    assert cache.put_chunk(digest, ".onnx", 1000, len(blob), blob[1000:]) is True
    assert cache.verified_path(digest, ".onnx").read_bytes() == blob
    assert cache.missing([(digest, ".onnx")]) == []
    # a different payload under the same digest is refused and nothing is published
    other = hashlib.sha256(b"x").hexdigest()
    with pytest.raises(ShardIntegrityError):
        cache.put_chunk(other, ".onnx", 0, 3, b"abc")
    assert not cache.has(other, ".onnx")


def test_cache_refuses_bad_keys(tmp_path: Path) -> None:
    cache = ShardCache(tmp_path)
    with pytest.raises(DeployError, match="sha256"):
        cache.path_for("../../etc/passwd", ".onnx")
    with pytest.raises(DeployError, match="shard type"):
        cache.path_for("0" * 64, ".pkl")
