"""The records of an LLM layout: pipeline stages of tensor-parallel groups, and the
predictions that chose it.

Why one record for every strategy: a single device is one stage of one share, tensor
parallelism one stage of n shares, a pipeline n stages of one share each, and a hybrid
anything between. Each stage is a `TensorPlan` over a layer range (its shares carry
`layers`), so the agents, the slices and the worker read a stage exactly as they read
a tensor plan; the layout adds the order of the stages, how many micro-batches a step
is cut into, and what the planner predicted for every strategy it considered and why
it chose this one (`predictions`, `reason`) — kept with the plan, JSON round-trip.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from partitioner.errors import PartitionError
from partitioner.tensor_plan import DecoderShape, TensorPlan

LAYOUT_VERSION = 1
STRATEGIES = ("single", "tensor", "pipeline", "hybrid")
OBJECTIVES = ("latency", "throughput")


def strategy_of(group_sizes: tuple[int, ...] | list[int]) -> str:
    """The strategy a layout of stages with these group sizes is."""
    if len(group_sizes) == 1:
        return "single" if group_sizes[0] == 1 else "tensor"
    return "pipeline" if all(n == 1 for n in group_sizes) else "hybrid"


@dataclass(frozen=True)
class LlmStage:
    """One pipeline stage: its layers [start, end), its tensor-parallel group (a
    `TensorPlan` whose shares hold those layers), and its predicted decode times."""

    index: int
    layers: tuple[int, int]
    plan: TensorPlan
    compute_s: float  # one decode token through this stage's layers, collectives included
    hop_s: float  # the hidden state of one token to the next stage (0 for the last)

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(s.device for s in self.plan.shares)

    @property
    def first(self) -> bool:
        return self.layers[0] == 0

    @property
    def last(self) -> bool:
        return self.layers[1] == self.plan.shape.layers


@dataclass(frozen=True)
class StrategyPrediction:
    """What one strategy's best layout is predicted to do (or why it cannot run)."""

    strategy: str
    feasible: bool
    s_per_token: float  # decode, one stream
    tokens_per_s: float  # decode, `streams` concurrent streams
    streams: int
    groups: tuple[tuple[str, ...], ...] = ()  # device names per stage, stage order
    layers: tuple[tuple[int, int], ...] = ()
    why: str = ""

    def describe(self) -> str:
        if not self.feasible:
            return f"{self.strategy}: cannot run ({self.why})"
        stages = " | ".join(f"{'+'.join(g)} [{a}..{b - 1}]"
                            for g, (a, b) in zip(self.groups, self.layers, strict=True))
        return (f"{self.strategy}: {self.s_per_token * 1e3:.2f} ms/token, "
                f"{self.tokens_per_s:.1f} tokens/s at {self.streams} streams — {stages}")


@dataclass(frozen=True)
class LlmLayout:
    """Stages in order, the micro-batches a step is cut into, and the choice's record."""

    shape: DecoderShape
    strategy: str
    stages: tuple[LlmStage, ...]
    predicted_s_per_token: float
    predicted_tokens_per_s: float
    streams: int = 1
    micro_batches: int = 1
    objective: str = "latency"
    predictions: tuple[StrategyPrediction, ...] = ()
    reason: str = ""
    model_digest: str = ""
    version: int = LAYOUT_VERSION
    notes: tuple[str, ...] = field(default=())

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(d for stage in self.stages for d in stage.devices)

    @property
    def groups(self) -> tuple[tuple[str, ...], ...]:
        return tuple(stage.devices for stage in self.stages)

    def tensor_plan(self) -> TensorPlan:
        """The layout as a plain tensor plan (single and tensor layouts: one stage),
        the choice recorded in its notes."""
        if len(self.stages) != 1:
            raise PartitionError(f"a {self.strategy} layout of {len(self.stages)} stages is "
                                 "not one tensor plan")
        plan = self.stages[0].plan
        shares = tuple(replace(s, layers=None) for s in plan.shares)
        notes = (*plan.notes, f"strategy {self.strategy} ({self.objective}): {self.reason}",
                 *(p.describe() for p in self.predictions))
        return replace(plan, shape=self.shape, shares=shares,
                       predicted_s_per_token=self.predicted_s_per_token, notes=notes)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LlmLayout:
        try:
            raw: dict[str, Any] = json.loads(text)
            if raw.get("version") != LAYOUT_VERSION or raw.get("strategy") not in STRATEGIES:
                raise PartitionError(
                    f"not a version-{LAYOUT_VERSION} LLM layout (strategy="
                    f"{raw.get('strategy')!r}, version={raw.get('version')!r}); re-plan")
            stages = tuple(
                LlmStage(int(s["index"]), _pair(s["layers"]),
                         TensorPlan.from_json(json.dumps(s["plan"])),
                         float(s["compute_s"]), float(s["hop_s"]))
                for s in raw["stages"])
            predictions = tuple(
                StrategyPrediction(
                    **{**p, "groups": tuple(tuple(g) for g in p["groups"]),
                       "layers": tuple(_pair(r) for r in p["layers"])})
                for p in raw.get("predictions", ()))
            return cls(
                shape=DecoderShape(**raw["shape"]), strategy=str(raw["strategy"]),
                stages=stages, predicted_s_per_token=float(raw["predicted_s_per_token"]),
                predicted_tokens_per_s=float(raw["predicted_tokens_per_s"]),
                streams=int(raw["streams"]), micro_batches=int(raw["micro_batches"]),
                objective=str(raw["objective"]), predictions=predictions,
                reason=str(raw.get("reason", "")), model_digest=str(raw.get("model_digest", "")),
                notes=tuple(raw.get("notes", ())))
        except (KeyError, TypeError, ValueError) as exc:
            raise PartitionError(f"malformed LLM layout JSON: {exc}") from exc


def _pair(value: Any) -> tuple[int, int]:
    a, b = value
    return int(a), int(b)


__all__ = ["LAYOUT_VERSION", "OBJECTIVES", "STRATEGIES", "LlmLayout", "LlmStage",
           "StrategyPrediction", "strategy_of"]
