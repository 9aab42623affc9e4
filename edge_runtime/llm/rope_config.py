"""RoPE parameters as a checkpoint's config.json states them, validated.

Why a module of its own: rotary embeddings are spelled three ways across the
architectures and transformers versions the engine reads — 4.x `rope_theta` plus
`rope_scaling`, 5.x `rope_parameters`, and for Gemma 3 5.x parameters nested per layer
type (or 4.x `rope_local_base_freq`) — and that reading is one job, apart from what
`config.LlmConfig` does with it. Unsupported RoPE types and partial rotary factors are
refused by name (`CheckpointError`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edge_runtime.errors import CheckpointError

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
FULL, SLIDING = "full_attention", "sliding_attention"


@dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding parameters (HF `rope_type` default, linear or llama3)."""

    theta: float = 10000.0
    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


def check_partial_rotary(raw: dict[str, Any], source: str) -> None:
    """RoPE on part of each head (Phi-4-mini, in rope_parameters for transformers 5)."""
    params = raw.get("rope_parameters")
    for where, holder in (("", raw), ("rope_parameters.", params)):
        if isinstance(holder, dict) and float(holder.get("partial_rotary_factor", 1.0)) != 1.0:
            raise CheckpointError(
                f"{source}: unsupported {where}partial_rotary_factor="
                f"{holder['partial_rotary_factor']!r}; use 1.0 (RoPE on whole heads)")


def read_rope(raw: dict[str, Any], source: str) -> RopeConfig:
    """The RoPE of every layer (4.x `rope_theta` + `rope_scaling`, or 5.x `rope_parameters`)."""
    params = raw.get("rope_parameters")
    if isinstance(params, dict) and "rope_type" not in params and "type" not in params:
        # transformers 5 may nest per-layer-type parameters; only one kind is supported.
        raise CheckpointError(f"{source}: unsupported nested rope_parameters={params!r}")
    scaling = params if isinstance(params, dict) else raw.get("rope_scaling") or {}
    theta = float((params or {}).get("rope_theta", raw.get("rope_theta", 10000.0)))
    field = "rope_parameters.rope_type" if params else "rope_scaling.rope_type"
    return _rope_from(scaling, theta, field, source)


def read_gemma3_rope(raw: dict[str, Any], source: str) -> tuple[RopeConfig, RopeConfig]:
    """Gemma 3: (global, local) RoPE. transformers 5 nests `rope_parameters` by layer
    type; 4.x has rope_theta (+ rope_scaling) for global, rope_local_base_freq for local."""
    params = raw.get("rope_parameters")
    if isinstance(params, dict) and (FULL in params or SLIDING in params):
        full = params.get(FULL) or {}
        local = params.get(SLIDING) or {}
        return (
            _rope_from(full, float(full.get("rope_theta", 1_000_000.0)),
                       f"rope_parameters.{FULL}.rope_type", source),
            _rope_from(local, float(local.get("rope_theta", 10_000.0)),
                       f"rope_parameters.{SLIDING}.rope_type", source),
        )
    scaling = params if isinstance(params, dict) else raw.get("rope_scaling") or {}
    theta = float((params or {}).get("rope_theta", raw.get("rope_theta", 1_000_000.0)))
    field = "rope_parameters.rope_type" if params else "rope_scaling.rope_type"
    local_theta = float(raw.get("rope_local_base_freq", 10_000.0))
    return _rope_from(scaling, theta, field, source), RopeConfig(theta=local_theta)


def _rope_from(scaling: dict[str, Any], theta: float, field: str, source: str) -> RopeConfig:
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise CheckpointError(
            f"{source}: unsupported {field}={rope_type!r}; "
            f"supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
        )
    if rope_type == "default":
        return RopeConfig(theta=theta)
    try:
        return RopeConfig(
            theta=theta,
            rope_type=rope_type,
            factor=float(scaling["factor"]),
            low_freq_factor=float(scaling.get("low_freq_factor", 1.0)),
            high_freq_factor=float(scaling.get("high_freq_factor", 4.0)),
            original_max_position_embeddings=int(
                scaling.get("original_max_position_embeddings", 8192)
            ),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: rope scaling {rope_type!r} lacks a valid {exc}") from exc


__all__ = ["FULL", "SLIDING", "SUPPORTED_ROPE_TYPES", "RopeConfig", "check_partial_rotary",
           "read_gemma3_rope", "read_rope"]
