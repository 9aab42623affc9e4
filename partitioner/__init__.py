"""partitioner: turn an ONNX model plus device and link profiles into a `Plan` and shards.

Pure planning (no sockets, no processes). The ONNX side (graph analysis, pipeline
planning, shard extraction, early exits) is listed first; the tensor-parallel LLM
planner (`partitioner.tensor`) adds its exports at the end of `__all__`.
"""

from partitioner.cost import DEFAULT_COST_MODEL, CostModel, Links
from partitioner.errors import (
    DigestMismatchError,
    InfeasiblePlanError,
    ModelLoadError,
    PartitionError,
    PlanMismatchError,
)
from partitioner.exit_policies import exit_decision, exit_scores, first_exits, softmax
from partitioner.exits import (
    Calibration,
    CurvePoint,
    apply_calibration,
    calibrate_exits,
    exit_latencies,
    plan_with_slo,
    simulate_exits,
)
from partitioner.extract import build_shard, extract_shards
from partitioner.graph import CutPoint, ExitHead, ModelGraph, Node
from partitioner.memory import SegmentMemory, admits, device_bytes, overcommitted
from partitioner.pipeline import plan_cuts, plan_pipeline, plan_single
from partitioner.plan import (
    ExitSpec,
    Plan,
    Stage,
    TensorSpec,
    check_model_digest,
    sha256_file,
    shard_digest,
    verify_shard,
)

__all__ = [
    "DEFAULT_COST_MODEL",
    "Calibration",
    "CostModel",
    "CurvePoint",
    "CutPoint",
    "DigestMismatchError",
    "ExitHead",
    "ExitSpec",
    "InfeasiblePlanError",
    "Links",
    "ModelGraph",
    "ModelLoadError",
    "Node",
    "PartitionError",
    "Plan",
    "PlanMismatchError",
    "SegmentMemory",
    "Stage",
    "TensorSpec",
    "admits",
    "apply_calibration",
    "build_shard",
    "calibrate_exits",
    "check_model_digest",
    "device_bytes",
    "exit_decision",
    "exit_latencies",
    "exit_scores",
    "extract_shards",
    "first_exits",
    "overcommitted",
    "plan_cuts",
    "plan_pipeline",
    "plan_single",
    "plan_with_slo",
    "sha256_file",
    "shard_digest",
    "simulate_exits",
    "softmax",
    "verify_shard",
]

# Tensor-parallel planning of decoder LLMs.
from partitioner.tensor import (
    DecoderShape,
    DeviceLike,
    TensorPlan,
    TensorShare,
    apportion,
    plan_tensor_parallel,
)

__all__ += [
    "DecoderShape",
    "DeviceLike",
    "TensorPlan",
    "TensorShare",
    "apportion",
    "plan_tensor_parallel",
]
