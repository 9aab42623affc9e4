"""Property test: on random DAGs (skips, several inputs and outputs, outputs read
later), chaining the shards of any cut set reproduces the whole model."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from devices import presets
from partitioner import ModelGraph, extract_shards, plan_cuts
from support import onnx_models as om

WIDTH = 6
DEVICES = [presets.get(n) for n in ("pi4", "phone", "laptop", "jetson-orin-nano")]


@st.composite
def dags(draw: st.DrawFn) -> tuple[int, list[tuple[str, int, int]], list[int]]:
    """(inputs, nodes as (op, first operand, second operand), output node indices)."""
    inputs = draw(st.integers(1, 2))
    count = draw(st.integers(3, 12))
    nodes = []
    for i in range(count):
        available = inputs + i
        op = draw(st.sampled_from(["MatMul", "Add", "Mul", "Tanh", "Relu"]))
        a = draw(st.integers(0, available - 1))
        b = draw(st.integers(0, available - 1))
        nodes.append((op, a, b))
    outputs = draw(st.lists(st.integers(0, count - 1), min_size=1, max_size=3, unique=True))
    return inputs, nodes, sorted(outputs)


def build(path: Path, inputs: int, spec: list[tuple[str, int, int]], outputs: list[int]) -> Path:
    rng = np.random.default_rng(len(spec))
    names = [f"in{i}" for i in range(inputs)]
    nodes, inits = [], []
    for i, (op, a, b) in enumerate(spec):
        out = f"t{i}"
        if op == "MatMul":
            inits.append(
                numpy_helper.from_array(
                    (rng.standard_normal((WIDTH, WIDTH)) * 0.5).astype(np.float32), f"w{i}"
                )
            )
            nodes.append(helper.make_node("MatMul", [names[a], f"w{i}"], [out]))
        elif op in ("Add", "Mul"):
            nodes.append(helper.make_node(op, [names[a], names[b]], [out]))
        else:
            nodes.append(helper.make_node(op, [names[a]], [out]))
        names.append(out)
    used_inputs = [f"in{i}" for i in range(inputs)]
    graph = helper.make_graph(
        nodes,
        "random_dag",
        [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", WIDTH])
            for n in used_inputs
        ],
        [
            helper.make_tensor_value_info(f"t{o}", TensorProto.FLOAT, ["batch", WIDTH])
            for o in outputs
        ],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dag=dags(), data=st.data())
def test_random_dag_shards_chain_to_the_whole_model(dag, data) -> None:
    inputs, spec, outputs = dag
    with tempfile.TemporaryDirectory() as tmp:
        model = build(Path(tmp) / "m.onnx", inputs, spec, outputs)
        graph = ModelGraph.from_onnx(model)
        n = len(graph.nodes)
        positions = [p.position for p in graph.cut_points()]
        cuts = (
            sorted(data.draw(st.lists(st.sampled_from(positions), max_size=3, unique=True)))
            if positions
            else []
        )
        plan = extract_shards(plan_cuts(graph, DEVICES, cuts, exits=()), model, Path(tmp) / "out")
        assert plan.stages[-1].node_end == n
        rng = np.random.default_rng(0)
        feeds = {
            f"in{i}": rng.standard_normal((2, WIDTH)).astype(np.float32) for i in range(inputs)
        }
        reference = om.run_model(model, feeds)
        chained = om.chain_shards(Path(tmp) / "out", plan, feeds)
        assert sorted(chained) == sorted(reference)
        for name, value in reference.items():
            np.testing.assert_allclose(chained[name], value, rtol=1e-5, atol=1e-5)
