"""Deploying a model file that the planner cannot cut (`.tflite`) whole, on one agent.

The partitioner reads ONNX graphs only, so a `.tflite` model runs as a single
stage on the fastest agent that offers LiteRT. Its signature is read by
opening the file locally in the same backend the agent will use (when this
machine has it), so bad inputs are still refused before anything is sent.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge_runtime.backends import TensorSpec, open_backend
from edge_runtime.errors import DeployError
from edge_runtime.sdk.agents import Agents
from partitioner.plan import Plan, Stage, sha256_file
from partitioner.plan import TensorSpec as PlanTensorSpec

log = logging.getLogger(__name__)

# Suffixes deployed whole (no planning, no extraction).
WHOLE_FILE_SUFFIXES = (".tflite",)


def _plan_spec(spec: TensorSpec) -> PlanTensorSpec:
    return PlanTensorSpec(spec.name, spec.dtype,
                          tuple("?" if d is None else d for d in spec.shape))


def _signature(model: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    try:
        backend = open_backend(model, threads=1)
    except DeployError as error:
        raise DeployError(
            f"cannot read the signature of {model.name} on this machine ({error}); install "
            "ai-edge-litert here too"
        ) from error
    try:
        return backend.inputs, backend.outputs
    finally:
        backend.close()


def whole_file_plan(cluster: Agents, model: Path, devices: Sequence[str] | None) -> Any:
    """A one-stage plan putting `model` on the fastest agent that can run its file type."""
    suffix = model.suffix.lower()
    infos = [cluster.info(n) for n in devices] if devices else list(cluster.agents)
    able = [info for info in infos if suffix in info.backends]
    if not able:
        raise DeployError(
            f"no agent can run {suffix} models (agents: "
            f"{', '.join(f'{i.name} {list(i.backends)}' for i in infos)}); install "
            "ai-edge-litert on an agent's device and restart it"
        )
    best = max(able, key=lambda info: info.profile.gflops_fp32)
    inputs, outputs = _signature(model)
    digest = sha256_file(model)
    stage = Stage(
        index=0, device=best.name, device_index=0, node_start=0, node_end=0,
        inputs=tuple(s.name for s in inputs), forward=(), outputs=tuple(s.name for s in outputs),
        input_specs=tuple(_plan_spec(s) for s in inputs),
        output_specs=tuple(_plan_spec(s) for s in outputs),
        shard_file=model.name, shard_sha256=digest,
    )
    log.info("%s runs whole on %s (fastest agent with %s support)", model.name, best.name,
             suffix)
    return Plan(
        model_sha256=digest, strategy="single", objective="latency", stages=(stage,),
        devices=(best.name,), model_inputs=stage.input_specs, model_outputs=stage.output_specs,
        model_name=model.stem,
    )
