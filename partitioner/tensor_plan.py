"""The records of a tensor-parallel LLM plan: the decoder's sizes, each device's share, the plan.

Why a module of its own: these records are what the rest of the runtime reads and
ships (the engine, the agents and the SDK slice weights by a `TensorShare`, a plan
crosses the wire as JSON), while only the planner in `partitioner.tensor` computes
them. Keeping them apart lets readers of a plan import the records without the
planning arithmetic, and keeps each module to one job. Every name here stays
importable from `partitioner.tensor`, and the three records from `partitioner`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from partitioner.errors import PartitionError

PLAN_VERSION = 1


@dataclass(frozen=True)
class DecoderShape:
    """The sizes of a Llama-family decoder that planning needs."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    bytes_per_element: int = 4
    max_context: int = 2048
    # A mixture of experts (0: a dense MLP): `experts` per layer, `experts_per_token` of
    # them run for each token; `intermediate` is then the experts' widths summed, so an
    # expert is `expert_intermediate` MLP columns (`partitioner.experts`).
    experts: int = 0
    experts_per_token: int = 0

    def __post_init__(self) -> None:
        if min(self.hidden, self.intermediate, self.layers, self.heads, self.kv_heads) <= 0:
            raise PartitionError(f"decoder shape has a non-positive size: {self}")
        if self.heads % self.kv_heads:
            raise PartitionError(
                f"heads={self.heads} is not a multiple of kv_heads={self.kv_heads}"
            )
        if self.experts and (self.intermediate % self.experts
                             or not 0 < self.experts_per_token <= self.experts):
            raise PartitionError(
                f"{self.experts} experts need intermediate ({self.intermediate}) a multiple "
                f"of them and 1..{self.experts} experts per token, not {self.experts_per_token}")

    @property
    def expert_intermediate(self) -> int:
        """The width of one expert (0 for a dense MLP)."""
        return self.intermediate // self.experts if self.experts else 0

    def router_bytes(self) -> int:
        """Weight bytes of one layer's router (every device holds all of it)."""
        return self.experts * self.hidden * self.bytes_per_element

    @property
    def group(self) -> int:
        return self.heads // self.kv_heads

    def kv_group_bytes(self) -> int:
        """Weight bytes of one KV-head group in one layer (q, k, v rows and o columns)."""
        return (2 * self.group + 2) * self.head_dim * self.hidden * self.bytes_per_element

    def mlp_column_bytes(self) -> int:
        """Weight bytes of one intermediate column in one layer (gate, up, down)."""
        return 3 * self.hidden * self.bytes_per_element

    def kv_cache_bytes(self, kv_heads: int) -> int:
        """fp32 K and V for `kv_heads` heads over all layers at `max_context`."""
        return 2 * self.layers * kv_heads * self.max_context * self.head_dim * 4

    def digest(self) -> str:
        fields = asdict(self)
        if not self.experts:  # a dense shape's digest is the one it had before experts
            del fields["experts"], fields["experts_per_token"]
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class TensorShare:
    """One device's slice of every layer and its predicted cost."""

    device: str
    kv_heads: tuple[int, int]
    mlp_columns: tuple[int, int]
    vocab_rows: tuple[int, int]
    weight_bytes: int
    compute_s_per_token: float
    wire_bytes_per_token: int
    peak_memory_bytes: int
    streaming: bool = False
    window_bytes: int = 0
    # A pipeline stage's share: the layers [start, end) it holds (None: every layer).
    # The first layer range takes token ids, the last one holds the final norm and LM
    # head; the others take and return the hidden state (`partitioner.llm_pipeline`).
    layers: tuple[int, int] | None = None
    # A mixture of experts: the experts [start, end) it holds in every layer, whose
    # columns are `mlp_columns` (an expert is `expert_intermediate` columns wide).
    experts: tuple[int, int] = (0, 0)

    def layer_range(self, n_layers: int) -> tuple[int, int]:
        """The layers this share holds, [start, end), of a model of `n_layers`."""
        return (0, n_layers) if self.layers is None else self.layers

    @property
    def n_kv_heads(self) -> int:
        return self.kv_heads[1] - self.kv_heads[0]

    @property
    def n_columns(self) -> int:
        return self.mlp_columns[1] - self.mlp_columns[0]

    @property
    def n_vocab_rows(self) -> int:
        return self.vocab_rows[1] - self.vocab_rows[0]

    @property
    def n_experts(self) -> int:
        return self.experts[1] - self.experts[0]

    def summary(self, moe: bool = False) -> str:
        """One line for people: what the device holds and its predicted time per token
        (`moe`: the model is a mixture of experts, so its experts are named)."""
        mlp = f"{self.n_columns} mlp cols"
        if moe:
            mlp = (f"experts {self.experts[0]}..{self.experts[1] - 1}" if self.n_experts
                   else "no experts")
        return (f"{self.device}: {self.n_kv_heads} kv heads, {mlp}, {self.n_vocab_rows} vocab "
                f"rows, {self.weight_bytes / 1e6:.1f} MB, "
                f"{self.compute_s_per_token * 1e3:.2f} ms/token"
                f"{' (streaming)' if self.streaming else ''}")


@dataclass(frozen=True)
class TensorPlan:
    """A tensor-parallel plan: shares in device order, the hub, predicted token time."""

    shape: DecoderShape
    shares: tuple[TensorShare, ...]
    hub: int
    predicted_s_per_token: float
    model_digest: str = ""
    version: int = PLAN_VERSION
    strategy: str = "tensor"
    notes: tuple[str, ...] = field(default=())
    # the allreduce algorithm per payload size, from measured links and the one cost
    # model (`transports.cost.allreduce_schedule`): ((up to bytes, algorithm), ...);
    # empty: every allreduce is a star around `hub`
    allreduce: tuple[tuple[int, str], ...] = field(default=())

    def describe(self) -> list[str]:
        """One line per share (`TensorShare.summary`), then the predicted time per token."""
        moe = self.shape.experts > 0
        return [*(s.summary(moe) for s in self.shares),
                f"predicted {self.predicted_s_per_token * 1e3:.2f} ms/token"
                + (f" (expected: {self.shape.experts_per_token} of {self.shape.experts} "
                   "experts run per token)" if moe else "")]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TensorPlan:
        try:
            raw: dict[str, Any] = json.loads(text)
            if raw.get("strategy") != "tensor" or raw.get("version") != PLAN_VERSION:
                raise PartitionError(
                    f"not a version-{PLAN_VERSION} tensor plan (strategy={raw.get('strategy')!r}, "
                    f"version={raw.get('version')!r}); re-plan with this release"
                )
            shares = tuple(
                TensorShare(
                    **{
                        **s,
                        "kv_heads": tuple(s["kv_heads"]),
                        "mlp_columns": tuple(s["mlp_columns"]),
                        "vocab_rows": tuple(s["vocab_rows"]),
                        "layers": None if s.get("layers") is None else tuple(s["layers"]),
                        "experts": tuple(s.get("experts", (0, 0))),
                    }
                )
                for s in raw["shares"]
            )
            return cls(
                shape=DecoderShape(**raw["shape"]),
                shares=shares,
                hub=int(raw["hub"]),
                predicted_s_per_token=float(raw["predicted_s_per_token"]),
                model_digest=str(raw.get("model_digest", "")),
                notes=tuple(raw.get("notes", ())),
                allreduce=tuple((int(upto), str(name))
                                for upto, name in raw.get("allreduce", ())),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PartitionError(f"malformed tensor plan JSON: {exc}") from exc


__all__ = ["PLAN_VERSION", "DecoderShape", "TensorPlan", "TensorShare"]
