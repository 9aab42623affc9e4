"""Graph analysis: FLOPs against hand-computed values, cut sets, exits, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from partitioner import ModelGraph, ModelLoadError
from support import onnx_models as om


def test_conv_flops_grouped_and_depthwise(tmp_path: Path) -> None:
    graph = ModelGraph.from_onnx(
        om.residual_cnn(tmp_path / "r.onnx", blocks=1, channels=8), batch_size=2
    )
    convs = [n for n in graph.nodes if n.op_type == "Conv"]
    out = 2 * 16 * 16  # batch × H × W (padding keeps 16×16)
    # stem: 3 → 8, 3×3; grouped (group=2): 8 → 8 with 4 inputs per group; depthwise: 1 input
    assert convs[0].flops == 2 * 8 * out * 3 * 9
    assert convs[1].flops == 2 * 8 * out * 4 * 9
    assert convs[2].flops == 2 * 8 * out * 1 * 9
    assert convs[0].param_bytes == 8 * 3 * 9 * 4


def test_attention_matmuls_count_batched_products(tmp_path: Path) -> None:
    graph = ModelGraph.from_onnx(
        om.attention_block(tmp_path / "a.onnx", seq=8, dim=16), batch_size=3
    )
    by_out = {n.outputs[0]: n for n in graph.nodes}
    assert by_out["q"].flops == 2 * 3 * 8 * 16 * 16
    assert by_out["scores"].flops == 2 * 3 * 8 * 8 * 16  # Q·Kᵀ: [3,8,16]×[3,16,8]
    assert by_out["ctx"].flops == 2 * 3 * 8 * 16 * 8  # P·V: [3,8,8]×[3,8,16]
    assert by_out["probs"].op_class == "elementwise"


def test_batch_size_scales_activations_not_parameters(tmp_path: Path) -> None:
    path = om.mlp_chain(tmp_path / "m.onnx")
    one, four = ModelGraph.from_onnx(path, 1), ModelGraph.from_onnx(path, 4)
    assert four.total_flops == pytest.approx(4 * one.total_flops, rel=0.01)
    assert four.total_param_bytes == one.total_param_bytes
    assert four.crossing_bytes()[5] == 4 * one.crossing_bytes()[5]
    assert one.spec("x").shape == ("batch", 32)  # the signature keeps the symbolic dim


def test_skip_connections_cross_every_cut_they_span(tmp_path: Path) -> None:
    graph = ModelGraph.from_onnx(om.wide_skips(tmp_path / "w.onnx", depth=5))
    sum_at = next(n.index for n in graph.nodes if n.op_type == "Sum")
    for point in graph.cut_points():
        produced = {o for n in graph.nodes[: point.position] for o in n.outputs}
        needed = {i for n in graph.nodes[point.position :] for i in n.inputs}
        expected = (produced | {"x"}) & needed
        assert set(point.tensors) == expected
    # just before the Sum every layer output crosses
    assert len(graph.crossing(sum_at)) == 5


def test_if_node_is_atomic_and_constants_never_cross(tmp_path: Path) -> None:
    graph = ModelGraph.from_onnx(om.with_if(tmp_path / "if.onnx"))
    if_node = next(n for n in graph.nodes if n.op_type == "If")
    assert "h" in if_node.inputs  # read by the branches from the outer scope
    assert all(n.op_type != "Constant" for n in graph.nodes)
    assert all("zero" not in p.tensors for p in graph.cut_points())


def test_exit_heads_found_by_name_and_ordered_first(tmp_path: Path) -> None:
    graph = ModelGraph.from_onnx(om.exits_mlp(tmp_path / "e.onnx"))
    assert [(e.name, e.final) for e in graph.exits] == [
        ("exit1", False),
        ("exit2", False),
        ("logits", True),
    ]
    assert [e.position for e in graph.exits] == [3, 6, 9]
    assert graph.exits[0].flops_fraction < graph.exits[1].flops_fraction < 1.0
    named = ModelGraph.from_onnx(tmp_path / "e.onnx", exit_outputs=["exit2"])
    assert [e.name for e in named.exits] == [
        "exit2",
        "exit1",
    ]  # exit1 is then the first other output
    with pytest.raises(ModelLoadError, match="not an output"):
        ModelGraph.from_onnx(tmp_path / "e.onnx", exit_outputs=["nope"])


def test_digits_asset_exits_at_the_stated_flops() -> None:
    graph = ModelGraph.from_onnx(om.DIGITS_MODEL)
    fractions = {e.name: e.flops_fraction for e in graph.exits}
    assert set(fractions) == {"exit1", "exit2", "final"}
    assert fractions["exit1"] <= 0.20
    assert 0.35 <= fractions["exit2"] <= 0.65
    assert graph.spec("image").shape == ("batch", 1, 8, 8)


def test_not_onnx_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "notes.onnx"
    bad.write_text("this is not a model")
    with pytest.raises(ModelLoadError, match="not an ONNX model"):
        ModelGraph.from_onnx(bad)
    with pytest.raises(ModelLoadError, match="no such model file"):
        ModelGraph.from_onnx(tmp_path / "missing.onnx")


def test_checker_failure_is_refused(tmp_path: Path) -> None:
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph(
        [node], "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "bad.onnx"
    onnx.save_model(model, str(path))  # 'x' is never defined
    with pytest.raises(ModelLoadError, match="checker"):
        ModelGraph.from_onnx(path)


def test_op_without_shape_inference_is_refused(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("MysteryOp", ["a"], ["b"], domain="com.example"),
        helper.make_node("Relu", ["b"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    )
    path = tmp_path / "custom.onnx"
    onnx.save_model(model, str(path))
    with pytest.raises(ModelLoadError, match="MysteryOp"):
        ModelGraph.from_onnx(path)


def test_crossing_bytes_match_the_listed_tensors(tmp_path: Path) -> None:
    graph = ModelGraph.from_onnx(om.multi_io(tmp_path / "m.onnx"), batch_size=2)
    sizes = graph.crossing_bytes()
    for point in graph.cut_points():
        assert (
            point.nbytes
            == sum(graph.tensors[t].nbytes for t in point.tensors)
            == sizes[point.position]
        )
    # input 'b' is used late: it crosses the early cuts
    assert "b" in graph.crossing(1)
    assert np.all(sizes >= 0)
