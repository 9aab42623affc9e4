"""The `Plan` records: what runs where, what it is predicted to cost, and digests.

A plan is the one object that crosses from planning to running: the SDK deploys it,
agents execute its stages, and benchmarks compare its predictions with measurements.
So every record here is a frozen dataclass with a lossless JSON form (a person may
read a plan file), and the plan carries the sha256 of the model it was made for so
that it is never applied to another model by mistake (`PlanMismatchError`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from partitioner.errors import DigestMismatchError, PartitionError, PlanMismatchError

log = logging.getLogger(__name__)

PLAN_VERSION = 1
PLAN_FILE = "plan.json"
Objective = Literal["latency", "throughput"]
ExitPolicy = Literal["max_prob", "entropy", "margin", "patience"]
EXIT_POLICIES: tuple[str, ...] = ("max_prob", "entropy", "margin", "patience")
STRATEGIES: tuple[str, ...] = ("single", "pipeline", "tensor", "hybrid")
_CHUNK = 1 << 20


def _chunks(path: str | Path) -> Iterator[bytes]:
    """A file's bytes in 1 MiB chunks (models can be large)."""
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            yield chunk


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks (models can be large)."""
    digest = hashlib.sha256()
    for chunk in _chunks(path):
        digest.update(chunk)
    return digest.hexdigest()


def shard_digest(path: str | Path) -> str:
    """The sha256 of a shard: its `.onnx` bytes, then its external-data file if any.

    A shard over the external-data threshold keeps its weights in `<file>.data`
    beside it; the digest covers both so a tampered weight file is caught too.
    """
    path = Path(path)
    digest = hashlib.sha256()
    data_path = path.with_name(path.name + ".data")
    for part in (path, data_path) if data_path.exists() else (path,):
        for chunk in _chunks(part):
            digest.update(chunk)
    return digest.hexdigest()


def verify_shard(path: str | Path, sha256: str) -> None:
    """Refuse a shard whose bytes do not match the digest recorded in the plan."""
    actual = shard_digest(path)
    if actual != sha256:
        raise DigestMismatchError(
            f"shard {path} has sha256 {actual[:16]}…, but the plan expects {sha256[:16]}…: "
            "the file was corrupted or replaced; re-run extract_shards (or `edge-runtime plan`) "
            "and redeploy"
        )


@dataclass(frozen=True)
class TensorSpec:
    """Name, element type (numpy dtype name) and shape of a tensor; symbolic dims are strings."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TensorSpec:
        return cls(str(data["name"]), str(data["dtype"]), tuple(data["shape"]))


@dataclass(frozen=True)
class ExitSpec:
    """One exit head: where it ends, and when the runtime may stop there.

    `threshold` means: for "max_prob" and "margin" stop when the score is >= it; for
    "entropy" stop when the entropy (nats) is <= it; for "patience" stop when the
    last `patience` exits (this one included) agree on the top class. A threshold of
    None means "never stop here" (uncalibrated). The final exit has `final=True`
    and always answers.
    """

    name: str
    output: str
    stage_index: int = -1
    policy: str = "max_prob"
    threshold: float | None = None
    patience: int = 2
    accuracy: float | None = None
    flops_fraction: float = 0.0
    final: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ExitSpec:
        return cls(**dict(data))


@dataclass(frozen=True)
class Stage:
    """One contiguous segment of the model's nodes on one device.

    Nodes `node_start` .. `node_end - 1` (in `ModelGraph` order) run as one shard.
    `inputs`: tensors it consumes, from the model inputs or the previous cut.
    `forward`: the whole crossing set of the cut after it — the shard's outputs plus
    earlier tensors still needed later, which the runtime passes on itself.
    `outputs`: model outputs produced here. Consecutive stages may share a device
    (a stage boundary is also placed after every exit head); then their transfer is 0.
    """

    index: int
    device: str
    device_index: int
    node_start: int
    node_end: int
    inputs: tuple[str, ...]
    forward: tuple[str, ...]
    outputs: tuple[str, ...]
    exit: str | None = None
    predicted_compute_s: float = 0.0
    predicted_transfer_s: float = 0.0
    transfer_bytes: int = 0
    memory_bytes: int = 0
    flops: float = 0.0
    input_specs: tuple[TensorSpec, ...] = ()
    output_specs: tuple[TensorSpec, ...] = ()
    shard_file: str | None = None
    shard_sha256: str | None = None

    @property
    def shard_outputs(self) -> tuple[str, ...]:
        """Names the shard itself produces (its ONNX outputs), in the shard's order."""
        return tuple(spec.name for spec in self.output_specs)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["input_specs"] = [s.to_json() for s in self.input_specs]
        data["output_specs"] = [s.to_json() for s in self.output_specs]
        for key in ("inputs", "forward", "outputs"):
            data[key] = list(data[key])
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Stage:
        values = dict(data)
        for key in ("inputs", "forward", "outputs"):
            values[key] = tuple(values[key])
        values["input_specs"] = tuple(
            TensorSpec.from_json(s) for s in values.get("input_specs", ())
        )
        values["output_specs"] = tuple(
            TensorSpec.from_json(s) for s in values.get("output_specs", ())
        )
        return cls(**values)


@dataclass(frozen=True)
class Plan:
    """A versioned, JSON-serialisable assignment of a model to devices.

    `predicted_latency_s`: one request through every stage (compute + transfers),
    ignoring early exits; `expected_latency_s` is the same with calibrated exits
    (None without calibration). `predicted_throughput_rps`: 1 / bottleneck stage time
    (compute or transfer) when requests stream through the pipeline.
    `extra` holds strategy-specific fields (the tensor planner's, calibration curves).
    """

    model_sha256: str
    strategy: str
    objective: str
    stages: tuple[Stage, ...]
    exits: tuple[ExitSpec, ...] = ()
    devices: tuple[str, ...] = ()
    model_inputs: tuple[TensorSpec, ...] = ()
    model_outputs: tuple[TensorSpec, ...] = ()
    batch_size: int = 1
    predicted_latency_s: float = 0.0
    predicted_throughput_rps: float = 0.0
    expected_latency_s: float | None = None
    model_name: str = ""
    version: int = PLAN_VERSION
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise PartitionError(
                f"unknown plan strategy {self.strategy!r}; use one of {STRATEGIES}"
            )

    @property
    def bottleneck_s(self) -> float:
        """The slowest stage's compute or outgoing transfer time."""
        return max(
            (max(s.predicted_compute_s, s.predicted_transfer_s) for s in self.stages), default=0.0
        )

    def with_exits(self, exits: tuple[ExitSpec, ...], expected_latency_s: float | None) -> Plan:
        return replace(self, exits=exits, expected_latency_s=expected_latency_s)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "model_sha256": self.model_sha256,
            "model_name": self.model_name,
            "strategy": self.strategy,
            "objective": self.objective,
            "batch_size": self.batch_size,
            "devices": list(self.devices),
            "model_inputs": [s.to_json() for s in self.model_inputs],
            "model_outputs": [s.to_json() for s in self.model_outputs],
            "predicted_latency_s": self.predicted_latency_s,
            "predicted_throughput_rps": self.predicted_throughput_rps,
            "expected_latency_s": self.expected_latency_s,
            "stages": [s.to_json() for s in self.stages],
            "exits": [e.to_json() for e in self.exits],
            "extra": dict(self.extra),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Plan:
        version = int(data.get("version", -1))
        if version != PLAN_VERSION:
            raise PartitionError(
                f"plan format version {version} is not supported (this build reads version "
                f"{PLAN_VERSION}); re-create the plan with this version of edge-runtime"
            )
        try:
            return cls(
                model_sha256=str(data["model_sha256"]),
                model_name=str(data.get("model_name", "")),
                strategy=str(data["strategy"]),
                objective=str(data["objective"]),
                batch_size=int(data.get("batch_size", 1)),
                devices=tuple(data.get("devices", ())),
                model_inputs=tuple(TensorSpec.from_json(s) for s in data.get("model_inputs", ())),
                model_outputs=tuple(TensorSpec.from_json(s) for s in data.get("model_outputs", ())),
                predicted_latency_s=float(data.get("predicted_latency_s", 0.0)),
                predicted_throughput_rps=float(data.get("predicted_throughput_rps", 0.0)),
                expected_latency_s=data.get("expected_latency_s"),
                stages=tuple(Stage.from_json(s) for s in data["stages"]),
                exits=tuple(ExitSpec.from_json(e) for e in data.get("exits", ())),
                extra=dict(data.get("extra", {})),
                version=version,
            )
        except (KeyError, TypeError, ValueError) as error:
            raise PartitionError(f"plan file is malformed ({error!r}); re-create it") from error

    def save(self, directory: str | Path) -> Path:
        """Write `plan.json` into `directory` (created if needed); returns its path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / PLAN_FILE
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path, model_path: str | Path | None = None) -> Plan:
        """Read a plan (a `plan.json` or the directory holding it).

        With `model_path`, the model's sha256 must equal the plan's, else
        `PlanMismatchError`: a plan made for another model must never be applied.
        """
        path = Path(path)
        if path.is_dir():
            path = path / PLAN_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as error:
            raise PartitionError(
                f"no plan file at {path}; run `edge-runtime plan` first"
            ) from error
        except json.JSONDecodeError as error:
            raise PartitionError(
                f"{path} is not valid JSON ({error}); re-create the plan"
            ) from error
        plan = cls.from_json(data)
        if model_path is not None:
            check_model_digest(plan, model_path)
        return plan


def check_model_digest(plan: Plan, model_path: str | Path) -> None:
    """Raise `PlanMismatchError` unless `model_path` is the model the plan was made for."""
    actual = sha256_file(model_path)
    if actual != plan.model_sha256:
        raise PlanMismatchError(
            f"the plan was made for a model with sha256 {plan.model_sha256[:16]}…, but "
            f"{model_path} has sha256 {actual[:16]}…: re-plan for this model "
            "(`edge-runtime plan MODEL.onnx ...`)"
        )
