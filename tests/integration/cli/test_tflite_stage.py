"""A `.tflite` stage inside a real agent process: the agent picks LiteRT by file type.

The SDK's `deploy` plans ONNX models; a `.tflite` model is deployed here through
the agent protocol itself (upload the shard, `deploy` one stage) and run through
the public `Deployment`, so the check covers the agent's backend choice, the
shard cache, the wire and the input checks with a real LiteRT interpreter.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

import edge_runtime as er
import support.tflite_models as tm
from edge_runtime.errors import InputError
from edge_runtime.protocol import Deploy, DeployReply, StageSpec
from edge_runtime.protocol import TensorSpec as WireSpec
from edge_runtime.sdk.deploy import DeploySource, Placement, upload
from partitioner.plan import Plan, Stage, TensorSpec


def _plan(agent: str, sha256: str) -> Plan:
    x, y = TensorSpec("x", "float32", (2, 3)), TensorSpec("y", "float32", (2, 4))
    stage = Stage(
        index=0,
        device=agent,
        device_index=0,
        node_start=0,
        node_end=1,
        inputs=("x",),
        forward=(),
        outputs=("y",),
        input_specs=(x,),
        output_specs=(y,),
        shard_file="fc.tflite",
        shard_sha256=sha256,
    )
    return Plan(
        model_sha256=sha256,
        strategy="single",
        objective="latency",
        stages=(stage,),
        devices=(agent,),
        model_inputs=(x,),
        model_outputs=(y,),
        model_name="fc",
    )


def test_agent_runs_a_tflite_stage_in_litert(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((4, 3)).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    model = tm.fully_connected_model(tmp_path / "fc.tflite", weights, bias, relu=True, batch=2)
    sha256 = hashlib.sha256(model.read_bytes()).hexdigest()
    with er.local_cluster(1, presets=["phone"], log_level="WARNING") as cluster:
        info = cluster.agents[0]
        assert ".tflite" in info.backends
        assert upload(cluster, info.name, model, sha256, None) == model.stat().st_size
        plan = _plan(info.name, sha256)
        spec = StageSpec(
            deployment_id="fc.0",
            stage=0,
            n_stages=1,
            shard_sha256=sha256,
            shard_ext=".tflite",
            inputs=("x",),
            forward=(),
            outputs=("y",),
            signature=(WireSpec("x", "float32", (2, 3)),),
        )
        cluster.call(info.name, Deploy("fc.0", "onnx-stage", spec, cluster.hub.session, 30.0),
                     DeployReply)
        source = DeploySource(model, "single", None, "latency", 1, (info.name,))
        deployment = er.Deployment(cluster, Placement("fc", plan, (spec,), 0), source)
        for _ in range(3):
            x = rng.standard_normal((2, 3)).astype(np.float32)
            result = deployment.run({"x": x})
            np.testing.assert_allclose(
                result["y"], np.maximum(x @ weights.T + bias, 0.0), rtol=1e-5, atol=1e-6
            )
            assert result.stages[0].agent == info.name
        with pytest.raises(InputError):
            deployment.run({"x": np.zeros((2, 3), np.float64)})
        # The agent keeps serving after bad input.
        x = np.ones((2, 3), np.float32)
        np.testing.assert_allclose(
            deployment.run({"x": x})["y"], np.maximum(x @ weights.T + bias, 0)
        )
        status = cluster.status()[info.name]
        assert status["available"]
        deployment.unload()
