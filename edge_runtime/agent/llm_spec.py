"""The "llm-shard" deployment's wire vocabulary, shared by the agent and the SDK.

Frame kinds, the timeout agents wait inside a collective, and `ShardSpec`: what one
agent needs to serve its share (the `deploy` spec, a plain dict on the wire), including
the weight format (`quantize`: None = fp32, "q4" = 4-bit, see `edge_runtime.llm.quant`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edge_runtime.errors import DeployError

TYPE = "llm-shard"
# Frame kinds this deployment type adds (coordinator -> agent, meta names deployment_id).
READY = "llm_ready"
CONNECT = "llm_connect"
STEP = "llm_step"
PUT = "llm_put"
REPLY = "reply"

# A member silent for this long inside one allreduce or gather fails the step on every
# live member, naming it. Far above one layer's compute on an emulated Pi (tens of ms
# for the models an edge device serves), short enough that a dead agent is reported
# well within the coordinator's request timeout (30 s). The spec may override it.
COLLECTIVE_TIMEOUT_S = 10.0
# Weight formats an agent can serve: None (fp32, resident or streamed) and "q4"
# (4-bit MatMulNBits kernels, resident shares only).
QUANTIZE_CHOICES: tuple[str | None, ...] = (None, "q4")


@dataclass(frozen=True)
class ShardSpec:
    """What one agent needs to serve its share (the wire dict of `deploy`)."""

    checkpoint: str
    checkpoint_digest: str
    plan_json: str
    rank: int
    names: tuple[str, ...]
    public_keys: tuple[str | None, ...]
    max_context: int
    memory_budget: int | None
    memory_bytes: int
    advertise_host: str
    collective_timeout_s: float = COLLECTIVE_TIMEOUT_S
    # (name, size) of the checkpoint's files, for agents that must receive them
    files: tuple[tuple[str, int], ...] = ()
    # BLAS threads for this share (None: the library's default, all cores); set when
    # several agents share one host so their thread pools do not oversubscribe it
    blas_threads: int | None = None
    # weight format of this share: None (fp32) or "q4"; every member of a group uses the
    # same one (the SDK sets it for all), since the partial sums are added together
    quantize: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "checkpoint": self.checkpoint,
            "checkpoint_digest": self.checkpoint_digest,
            "plan": self.plan_json,
            "rank": self.rank,
            "names": list(self.names),
            "public_keys": list(self.public_keys),
            "max_context": self.max_context,
            "memory_budget": self.memory_budget,
            "memory_bytes": self.memory_bytes,
            "advertise_host": self.advertise_host,
            "collective_timeout_s": self.collective_timeout_s,
            "files": [[name, size] for name, size in self.files],
            "blas_threads": self.blas_threads,
            "quantize": self.quantize,
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> ShardSpec:
        try:
            budget = data.get("memory_budget")
            spec = cls(
                checkpoint=str(data["checkpoint"]),
                checkpoint_digest=str(data["checkpoint_digest"]),
                plan_json=str(data["plan"]),
                rank=int(data["rank"]),
                names=tuple(str(n) for n in data["names"]),
                public_keys=tuple(None if k is None else str(k) for k in data["public_keys"]),
                max_context=int(data["max_context"]),
                memory_budget=None if budget is None else int(budget),
                memory_bytes=int(data["memory_bytes"]),
                advertise_host=str(data["advertise_host"]),
                collective_timeout_s=float(data.get("collective_timeout_s",
                                                    COLLECTIVE_TIMEOUT_S)),
                files=tuple((str(n), int(z)) for n, z in data.get("files", [])),
                blas_threads=None if data.get("blas_threads") is None
                else max(1, int(data["blas_threads"])),
                quantize=None if data.get("quantize") is None else str(data["quantize"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise DeployError(f"malformed llm-shard spec: {error!r}; redeploy with this "
                              "release's SDK") from error
        if not 0 <= spec.rank < len(spec.names) or len(spec.public_keys) != len(spec.names):
            raise DeployError(f"llm-shard spec: rank {spec.rank} of {len(spec.names)} members "
                              f"with {len(spec.public_keys)} keys")
        if spec.quantize not in QUANTIZE_CHOICES:
            raise DeployError(f"llm-shard spec: quantize={spec.quantize!r} is not a weight "
                              "format this agent serves (None or 'q4'); upgrade the agent or "
                              "deploy with quantize=None")
        return spec


__all__ = ["COLLECTIVE_TIMEOUT_S", "CONNECT", "PUT", "QUANTIZE_CHOICES", "READY", "REPLY",
           "STEP", "TYPE", "ShardSpec"]
