"""Shard extraction: one ONNX file per stage of a plan, with sha256 digests.

Why build shards by hand rather than with `onnx.utils.extract_model`: the planner
already knows each stage's node range and the exact tensors crossing each cut, so
a shard is those nodes, the initializers and `Constant` nodes they read, inputs =
the stage's `inputs` and outputs = what later stages or the caller need. Nothing is
pulled back in from earlier stages, so chaining the shards recomputes nothing and
reproduces the whole model. Inputs keep their symbolic dims (any batch size).

A shard whose weights exceed `external_data_threshold` keeps them in
`<shard>.onnx.data` beside it (protobuf cannot hold 2 GB); its digest covers both.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
from onnx import ModelProto, ValueInfoProto

from partitioner.errors import ModelLoadError, PlanMismatchError
from partitioner.graph import ModelGraph
from partitioner.plan import Plan, Stage, TensorSpec, check_model_digest, shard_digest
from partitioner.topology import subgraph_reads

log = logging.getLogger(__name__)

#: Shards whose initializers total more than this keep them in an external data file.
EXTERNAL_DATA_THRESHOLD = 1 << 30


def _value_info(graph: ModelGraph, spec: TensorSpec) -> ValueInfoProto:
    known = graph.value_infos.get(spec.name)
    if (
        known is not None
        and known.type.HasField("tensor_type")
        and known.type.tensor_type.HasField("shape")
    ):
        info = ValueInfoProto()
        info.CopyFrom(known)
        return info
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(spec.dtype))
    shape = [d if isinstance(d, int) else None if d == "?" else d for d in spec.shape]
    return onnx.helper.make_tensor_value_info(spec.name, elem, shape)


def build_shard(graph: ModelGraph, model: ModelProto, stage: Stage) -> ModelProto:
    """The ONNX model of one stage (weights taken from `model`, loaded with its data)."""
    nodes = list(graph.node_protos[stage.node_start : stage.node_end])
    reads = {x for n in nodes for x in [*n.input, *subgraph_reads(n)] if x}
    constants = [graph.constant_protos[x] for x in sorted(reads) if x in graph.constant_protos]
    unique_constants = list({id(c): c for c in constants}.values())
    initializers = [init for init in model.graph.initializer if init.name in reads]
    shard_graph = onnx.helper.make_graph(
        [*unique_constants, *nodes],
        f"{graph.name}_stage{stage.index}",
        [_value_info(graph, s) for s in stage.input_specs],
        [_value_info(graph, s) for s in stage.output_specs],
        initializer=initializers,
    )
    shard = onnx.helper.make_model(
        shard_graph,
        opset_imports=list(model.opset_import),
        ir_version=model.ir_version,
        functions=list(model.functions),
        producer_name="edge-runtime partitioner",
    )
    return shard


def _save(shard: ModelProto, path: Path, threshold: int) -> None:
    weight_bytes = sum(len(t.raw_data) or int(np.prod(t.dims)) * 4 for t in shard.graph.initializer)
    data_path = path.with_name(path.name + ".data")
    if data_path.exists():
        data_path.unlink()
    if weight_bytes > threshold:
        onnx.save_model(
            shard,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data_path.name,
            size_threshold=1024,
        )
    else:
        onnx.save_model(shard, str(path))
    try:
        onnx.checker.check_model(str(path))
    except Exception as error:  # a shard we wrote must pass; this is a planner bug
        raise ModelLoadError(f"extracted shard {path} fails the ONNX checker: {error}") from error


def extract_shards(
    plan: Plan,
    model_path: str | Path,
    out_dir: str | Path,
    *,
    graph: ModelGraph | None = None,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD,
    save_plan: bool = True,
) -> Plan:
    """Write `stage<i>.onnx` per stage into `out_dir`; return the plan with files and digests.

    Refuses (`PlanMismatchError`) a model whose sha256 is not the plan's. Pass the
    `graph` the plan was made from to skip re-analysing the model. With `save_plan`
    the returned plan is also written to `out_dir/plan.json`.
    """
    model_path = Path(model_path)
    out = Path(out_dir)
    check_model_digest(plan, model_path)
    if graph is None:
        exit_outputs = plan.extra.get("graph_exit_outputs")
        graph = ModelGraph.from_onnx(
            model_path,
            plan.batch_size,
            exit_outputs=list(exit_outputs) if exit_outputs is not None else None,
        )
    for stage in plan.stages:
        expected = graph.crossing(stage.node_end) if stage.node_end < len(graph.nodes) else ()
        if stage.node_end > len(graph.nodes) or (stage.forward and stage.forward != expected):
            raise PlanMismatchError(
                f"stage {stage.index} of the plan does not match the model's node order; "
                "re-plan with this version of edge-runtime"
            )
    model = onnx.load(str(model_path), load_external_data=True)
    out.mkdir(parents=True, exist_ok=True)
    stages: list[Stage] = []
    for stage in plan.stages:
        shard = build_shard(graph, model, stage)
        path = out / f"stage{stage.index}.onnx"
        _save(shard, path, external_data_threshold)
        digest = shard_digest(path)
        log.info("stage %d: %s (%s…)", stage.index, path.name, digest[:12])
        stages.append(replace(stage, shard_file=path.name, shard_sha256=digest))
    result = replace(plan, stages=tuple(stages))
    if save_plan:
        result.save(out)
    return result
