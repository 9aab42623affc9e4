"""`ModelGraph`: an ONNX model as an ordered list of costed nodes and its cut points.

Why a flat topological order: a pipeline stage is a contiguous run of nodes, so a
cut is a position in the order, and the tensors that cross it are exactly those
produced before it and consumed at or after it (skip connections included, however
far they reach). `If`/`Loop`/`Scan` nodes stay atomic: tensors their bodies read from
the outer scope count as the node's inputs. `Constant` nodes are not positions: they
have no inputs, so every shard that reads one gets its own copy and constants never
cross a cut.

When the model has exit heads, the order places every ancestor of exit 1 first, then
those of exit 2, and so on, so each exit is reached as early as possible and a cut
right after it separates the exit's work from the rest.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import ModelProto, NodeProto

from partitioner.errors import ModelLoadError
from partitioner.flops import node_flops, op_class
from partitioner.loader import TensorInfo, load_model, tensor_infos
from partitioner.plan import TensorSpec, sha256_file
from partitioner.topology import attributes, live_nodes, planning_order, subgraph_reads

log = logging.getLogger(__name__)

# Outputs named like "exit1", "exit_2", "early_exit3" are exit heads by convention.
EXIT_NAME = re.compile(r"^(early_?)?exit[_\-]?\d*$", re.IGNORECASE)


@dataclass(frozen=True)
class Node:
    """One node in planning order, with its cost."""

    index: int
    name: str
    op_type: str
    op_class: str
    inputs: tuple[str, ...]  # activations read (initializers and constants excluded)
    outputs: tuple[str, ...]
    flops: float
    param_bytes: int  # initializers first used by this node
    output_bytes: int


@dataclass(frozen=True)
class ExitHead:
    """An exit output and the cut position right after the node that produces it."""

    name: str
    output: str
    position: int
    flops_fraction: float
    final: bool


@dataclass(frozen=True)
class CutPoint:
    """A position where the model can be split and every tensor crossing it."""

    position: int
    tensors: tuple[str, ...]
    nbytes: int


@dataclass(frozen=True)
class ModelGraph:
    """An analysed ONNX model: nodes in planning order, tensors, cut points and exits."""

    path: Path
    sha256: str
    name: str
    batch_size: int
    nodes: tuple[Node, ...]
    tensors: Mapping[str, TensorInfo]
    model_inputs: tuple[str, ...]
    model_outputs: tuple[str, ...]
    exits: tuple[ExitHead, ...]
    node_protos: tuple[NodeProto, ...] = field(repr=False)
    # Constant nodes (not positions; copied into each shard that reads them) and the
    # symbolic value infos (typed shard inputs and outputs), both keyed by tensor name.
    constant_protos: Mapping[str, NodeProto] = field(repr=False, default_factory=dict)
    value_infos: Mapping[str, onnx.ValueInfoProto] = field(repr=False, default_factory=dict)
    # tensor -> (producer position or -1 for a model input, last consumer position)
    _span: Mapping[str, tuple[int, int]] = field(repr=False, default_factory=dict)

    @classmethod
    def from_onnx(
        cls,
        path: str | Path,
        batch_size: int = 1,
        *,
        exit_outputs: Sequence[str] | None = None,
        dims: Mapping[str, int] | None = None,
    ) -> ModelGraph:
        """Analyse the model at `path` at the given batch size.

        `exit_outputs`: the outputs that are early-exit heads, in network order; by
        default outputs named like ``exit1``/``early_exit_2`` (sorted by position).
        `dims`: sizes of other symbolic input dims, by dim name (``{"seq": 128}``) or by
        ``"input:axis"`` (``{"x:2": 64}``); unnamed ones default to 1 (axis 0: batch_size).
        """
        if batch_size < 1:
            raise ModelLoadError(f"batch_size must be >= 1, got {batch_size}")
        path = Path(path)
        model = load_model(path)
        inferred, infos = tensor_infos(model, batch_size, dims or {}, str(path))
        return cls._analyse(path, model, inferred, infos, batch_size, exit_outputs)

    @classmethod
    def _analyse(
        cls,
        path: Path,
        model: ModelProto,
        inferred: ModelProto,
        infos: dict[str, TensorInfo],
        batch_size: int,
        exit_outputs: Sequence[str] | None,
    ) -> ModelGraph:
        graph = inferred.graph
        initializers = {init.name: init for init in graph.initializer}
        is_const = [n.op_type == "Constant" and n.domain in ("", "ai.onnx") for n in graph.node]
        protos = [n for n, c in zip(graph.node, is_const, strict=True) if not c]
        live = live_nodes(protos, [v.name for v in graph.output])
        if not all(live):
            log.info("%s: %d node(s) feed no output and are left out", path, live.count(False))
            protos = [n for n, keep in zip(protos, live, strict=True) if keep]
        constant_protos = {
            o: n for n, c in zip(graph.node, is_const, strict=True) if c for o in n.output
        }
        constants = set(constant_protos)
        model_inputs = tuple(v.name for v in graph.input if v.name not in initializers)
        model_outputs = tuple(v.name for v in graph.output)
        exit_names = (
            list(exit_outputs)
            if exit_outputs is not None
            else [o for o in model_outputs if EXIT_NAME.match(o)]
        )
        for name in exit_names:
            if name not in model_outputs:
                raise ModelLoadError(
                    f"exit output {name!r} is not an output of the model; "
                    f"its outputs are {list(model_outputs)}"
                )
        order = planning_order(protos, exit_names)
        ordered = [protos[i] for i in order]
        seen_params: set[str] = set()
        nodes: list[Node] = []
        missing: list[str] = []
        for position, proto in enumerate(ordered):
            reads = [*proto.input, *sorted(subgraph_reads(proto))]
            acts = tuple(
                dict.fromkeys(
                    x for x in reads if x and x not in initializers and x not in constants
                )
            )
            params = [
                x
                for x in dict.fromkeys(reads)
                if (x in initializers or x in constants) and x not in seen_params
            ]
            seen_params.update(params)
            param_bytes = sum(infos[p].nbytes for p in params if p in infos)
            outputs = tuple(o for o in proto.output if o)
            for out in outputs:
                if out not in infos or not infos[out].dtype:
                    missing.append(f"{proto.op_type} ({proto.domain or 'ai.onnx'}) -> {out}")
            concrete = [infos[x].concrete if x in infos else None for x in proto.input]
            flops = node_flops(
                proto.op_type,
                concrete,
                [infos[o].concrete if o in infos else None for o in outputs],
                attributes(proto),
            )
            flops += _body_flops(proto, infos)
            nodes.append(
                Node(
                    index=position,
                    name=proto.name or f"{proto.op_type}_{position}",
                    op_type=proto.op_type,
                    op_class=op_class(proto.op_type),
                    inputs=acts,
                    outputs=outputs,
                    flops=flops,
                    param_bytes=param_bytes,
                    output_bytes=sum(infos[o].nbytes for o in outputs if o in infos),
                )
            )
        span = _spans(nodes, model_inputs, model_outputs)
        crossing_missing = [m for m in missing if m.rsplit(" -> ", 1)[1] in span]
        if crossing_missing:
            raise ModelLoadError(
                f"{path}: shape inference gives no type for {len(crossing_missing)} tensor(s), "
                "e.g. "
                f"{crossing_missing[:3]}: these ops are unsupported by ONNX shape inference, so "
                "shards cannot be typed; re-export the model with standard ONNX ops"
            )
        total = sum(n.flops for n in nodes) or 1.0
        cumulative = np.cumsum([n.flops for n in nodes])
        producer = {o: n.index for n in nodes for o in n.outputs}
        exits: list[ExitHead] = []
        for name in exit_names:
            position = producer[name] + 1 if name in producer else 0
            exits.append(
                ExitHead(name, name, position, float(cumulative[position - 1]) / total, False)
            )
        exits.sort(key=lambda e: e.position)
        if exits:
            finals = [o for o in model_outputs if o not in exit_names]
            for name in finals[:1]:
                position = producer[name] + 1 if name in producer else len(nodes)
                exits.append(
                    ExitHead(name, name, position, float(cumulative[position - 1]) / total, True)
                )
        return cls(
            path=path,
            sha256=sha256_file(path),
            name=path.stem,
            batch_size=batch_size,
            nodes=tuple(nodes),
            tensors=infos,
            model_inputs=model_inputs,
            model_outputs=model_outputs,
            exits=tuple(exits),
            node_protos=tuple(ordered),
            _span=span,
            constant_protos=constant_protos,
            value_infos={v.name: v for v in [*graph.input, *graph.value_info, *graph.output]},
        )

    # ---- cut points -----------------------------------------------------------------
    def crossing(self, position: int) -> tuple[str, ...]:
        """Tensors that cross the cut before node `position` (0 = the model inputs used)."""
        return tuple(name for name, (made, last) in self._span.items() if made < position <= last)

    def crossing_bytes(self) -> np.ndarray:
        """Bytes crossing every cut position 0..N (an array of N + 1)."""
        delta = np.zeros(len(self.nodes) + 2, dtype=np.float64)
        for name, (made, last) in self._span.items():
            size = self.tensors[name].nbytes if name in self.tensors else 0
            delta[made + 1] += size
            delta[last + 1] -= size
        return np.cumsum(delta)[: len(self.nodes) + 1]

    def cuttable(self) -> np.ndarray:
        """Bool per position 0..N: can the model be split there?

        Every position is a cut unless a tensor crossing it has no inferred rank: a
        shard input must be typed, so such a position cannot start a shard.
        """
        delta = np.zeros(len(self.nodes) + 2, dtype=np.int64)
        for name, (made, last) in self._span.items():
            info = self.tensors.get(name)
            if info is None or info.shape is None or not info.dtype:
                delta[made + 1] += 1
                delta[last + 1] -= 1
        result: np.ndarray = np.cumsum(delta)[: len(self.nodes) + 1] == 0
        return result

    def cut_points(self) -> list[CutPoint]:
        """Every interior position where the model can be split, with its crossing tensors."""
        sizes = self.crossing_bytes()
        ok = self.cuttable()
        return [
            CutPoint(p, self.crossing(p), int(sizes[p])) for p in range(1, len(self.nodes)) if ok[p]
        ]

    @property
    def exit_outputs(self) -> tuple[str, ...]:
        """The early-exit outputs (final excluded) that fixed this graph's node order."""
        return tuple(h.output for h in self.exits if not h.final)

    def produced_between(self, start: int, end: int) -> set[str]:
        return {o for n in self.nodes[start:end] for o in n.outputs}

    def spec(self, name: str) -> TensorSpec:
        info = self.tensors.get(name)
        if info is None:
            return TensorSpec(name, "", ())
        return TensorSpec(name, info.dtype, info.shape or ())

    @property
    def total_flops(self) -> float:
        return float(sum(n.flops for n in self.nodes))

    @property
    def total_param_bytes(self) -> int:
        return sum(n.param_bytes for n in self.nodes)


def _spans(
    nodes: Sequence[Node], model_inputs: Sequence[str], model_outputs: Sequence[str]
) -> dict[str, tuple[int, int]]:
    """For each activation: (producer position, or -1 for a model input; last consumer).

    A model output is "consumed" at its producer only (the stage that makes it returns
    it), so it crosses a cut only if a later node reads it.
    """
    made: dict[str, int] = {name: -1 for name in model_inputs}
    for node in nodes:
        for out in node.outputs:
            made[out] = node.index
    last: dict[str, int] = {}
    for node in nodes:
        for name in node.inputs:
            if name in made:
                last[name] = node.index
    del model_outputs
    return {name: (made[name], use) for name, use in last.items() if use > made[name]}


def _local_shape(
    name: str, infos: Mapping[str, TensorInfo], local: Mapping[str, onnx.ValueInfoProto]
) -> tuple[int, ...] | None:
    if name in infos:
        return infos[name].concrete
    value = local.get(name)
    if value is None or not value.type.tensor_type.HasField("shape"):
        return None
    return tuple(d.dim_value or 1 for d in value.type.tensor_type.shape.dim)


def _body_flops(node: NodeProto, infos: Mapping[str, TensorInfo]) -> float:
    """FLOPs inside If/Loop/Scan bodies (If: the dearer branch; Loop: one iteration)."""
    per_body: list[float] = []
    for attr in node.attribute:
        for body in [*([attr.g] if attr.HasField("g") else []), *attr.graphs]:
            local = {v.name: v for v in [*body.value_info, *body.output, *body.input]}
            total = 0.0
            for inner in body.node:
                total += node_flops(
                    inner.op_type,
                    [_local_shape(x, infos, local) for x in inner.input],
                    [_local_shape(x, infos, local) for x in inner.output],
                    attributes(inner),
                )
                total += _body_flops(inner, infos)
            per_body.append(total)
    return max(per_body, default=0.0)
