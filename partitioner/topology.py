"""Graph topology helpers: outer-scope reads of control-flow bodies, node order.

Why a custom order instead of the file's: a cut is a position in the order, and an
exit head can only end a stage if everything it needs comes before that position.
`planning_order` therefore places every ancestor of exit 1 first, then those of
exit 2, and so on, then the rest — still a topological order, and otherwise close to
the file's own.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import onnx
from onnx import NodeProto

from partitioner.errors import ModelLoadError

log = logging.getLogger(__name__)


def subgraph_reads(node: NodeProto) -> set[str]:
    """Names a control-flow node's bodies read from the outer scope (recursively)."""
    reads: set[str] = set()
    for attr in node.attribute:
        graphs = list((attr.g and [attr.g]) or []) + list(attr.graphs)
        for body in graphs:
            if not body.node:
                continue
            local = {v.name for v in body.input} | {i.name for i in body.initializer}
            for inner in body.node:
                for name in [*inner.input, *subgraph_reads(inner)]:
                    if name and name not in local:
                        reads.add(name)
                local.update(inner.output)
    return reads


def attributes(node: NodeProto) -> dict[str, object]:
    values: dict[str, object] = {}
    for attr in node.attribute:
        if attr.type in (
            onnx.AttributeProto.INT,
            onnx.AttributeProto.INTS,
            onnx.AttributeProto.FLOAT,
        ):
            values[attr.name] = onnx.helper.get_attribute_value(attr)
    return values


def planning_order(nodes: Sequence[NodeProto], exit_outputs: Sequence[str]) -> list[int]:
    """Indices of `nodes` in a topological order, exit ancestors first (see module doc)."""
    producer = {out: i for i, n in enumerate(nodes) for out in n.output if out}
    deps = [
        sorted({producer[x] for x in [*n.input, *subgraph_reads(n)] if x in producer} - {i})
        for i, n in enumerate(nodes)
    ]
    placed = [False] * len(nodes)
    order: list[int] = []
    visiting = [False] * len(nodes)

    def place(root: int) -> None:
        stack = [(root, 0)]
        while stack:
            index, next_dep = stack.pop()
            if placed[index]:
                continue
            visiting[index] = True
            while next_dep < len(deps[index]) and placed[deps[index][next_dep]]:
                next_dep += 1
            if next_dep < len(deps[index]):
                dep = deps[index][next_dep]
                if visiting[dep]:
                    raise ModelLoadError(
                        "the graph has a cycle through node "
                        f"{nodes[dep].name or nodes[dep].op_type}; an ONNX graph must be acyclic"
                    )
                stack.append((index, next_dep + 1))
                stack.append((dep, 0))
                continue
            visiting[index] = False
            placed[index] = True
            order.append(index)

    for output in exit_outputs:
        if output in producer:
            place(producer[output])
    for index in range(len(nodes)):
        place(index)
    return order


def live_nodes(nodes: Sequence[NodeProto], outputs: Sequence[str]) -> list[bool]:
    """Which nodes contribute to a model output (dead ones are dropped from planning).

    A node whose results no output needs would otherwise end a stage with nothing to
    send on, which no shard can express.
    """
    producer = {out: i for i, n in enumerate(nodes) for out in n.output if out}
    live = [False] * len(nodes)
    stack = [producer[o] for o in outputs if o in producer]
    while stack:
        index = stack.pop()
        if live[index]:
            continue
        live[index] = True
        node = nodes[index]
        stack.extend(producer[x] for x in [*node.input, *subgraph_reads(node)] if x in producer)
    return live
