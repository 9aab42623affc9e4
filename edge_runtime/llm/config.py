"""What the engine needs to know about a Llama-family checkpoint, read from its config.json.

Why a record of our own: the engine must not depend on `transformers`, and the three
architectures we run (Llama 2/3, Mistral, Qwen2) differ in only a few fields (attention
biases, sliding window, RoPE scaling). Reading exactly those fields — and refusing,
by name, any field whose value would change the math — is what keeps a silently wrong
forward pass impossible.

Both config spellings are read: transformers 4.x (`rope_theta` + `rope_scaling`) and
5.x (`rope_parameters`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime.errors import CheckpointError
from partitioner.tensor import DecoderShape

log = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding parameters (HF `rope_type` default, linear or llama3)."""

    theta: float = 10000.0
    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class LlmConfig:
    """The architecture of one decoder-only checkpoint, validated."""

    model_type: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    rms_norm_eps: float
    rope: RopeConfig
    max_position_embeddings: int
    qkv_bias: bool = False
    o_bias: bool = False
    tie_word_embeddings: bool = False
    sliding_window: int | None = None
    torch_dtype: str = "float32"
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    @property
    def group_size(self) -> int:
        """Query heads per KV head (GQA group)."""
        return self.heads // self.kv_heads

    def decoder_shape(self, max_context: int) -> DecoderShape:
        """The planner's view of this model (fp32 weights after conversion)."""
        return DecoderShape(
            hidden=self.hidden,
            intermediate=self.intermediate,
            layers=self.layers,
            heads=self.heads,
            kv_heads=self.kv_heads,
            head_dim=self.head_dim,
            vocab=self.vocab,
            bytes_per_element=4,
            max_context=max_context,
        )

    @classmethod
    def from_checkpoint(cls, directory: str | Path) -> LlmConfig:
        """Read `directory/config.json`; `CheckpointError` names any unsupported field."""
        path = Path(directory) / "config.json"
        if not path.is_file():
            raise CheckpointError(
                f"{path} not found: pass a Hugging Face checkpoint directory "
                "(config.json next to *.safetensors)"
            )
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise CheckpointError(f"{path} must hold a JSON object")
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> LlmConfig:
        """Validate an HF config dict; unsupported values raise `CheckpointError`."""

        def bad(field: str, value: object, hint: str) -> CheckpointError:
            return CheckpointError(f"{source}: unsupported {field}={value!r}; {hint}")

        model_type = raw.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise bad("model_type", model_type, f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
        act = raw.get("hidden_act", "silu")
        if act != "silu":
            raise bad("hidden_act", act, "only the SwiGLU MLP (silu) of the Llama family runs")
        if raw.get("mlp_bias", False):
            raise bad("mlp_bias", True, "Llama-family MLPs without biases only")
        if float(raw.get("partial_rotary_factor", 1.0)) != 1.0:
            raise bad("partial_rotary_factor", raw["partial_rotary_factor"], "use 1.0")
        if model_type == "qwen2" and raw.get("use_sliding_window", False):
            raise bad("use_sliding_window", True, "Qwen2 per-layer sliding windows are not run")

        def need_int(name: str) -> int:
            value = raw.get(name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise CheckpointError(f"{source}: {name} must be a positive integer, got {value!r}")
            return value

        hidden = need_int("hidden_size")
        heads = need_int("num_attention_heads")
        kv_heads = int(raw.get("num_key_value_heads") or heads)
        if kv_heads <= 0 or heads % kv_heads:
            raise bad("num_key_value_heads", kv_heads, f"must divide num_attention_heads={heads}")
        head_dim = raw.get("head_dim") or hidden // heads
        if not isinstance(head_dim, int) or head_dim % 2:
            raise bad("head_dim", head_dim, "must be an even integer")
        rope = _read_rope(raw, source)
        window = raw.get("sliding_window") if model_type == "mistral" else None
        eos = raw.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
        attention_bias = bool(raw.get("attention_bias", False))
        return cls(
            model_type=model_type,
            hidden=hidden,
            intermediate=need_int("intermediate_size"),
            layers=need_int("num_hidden_layers"),
            heads=heads,
            kv_heads=kv_heads,
            head_dim=head_dim,
            vocab=need_int("vocab_size"),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope=rope,
            max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
            # Qwen2 has q/k/v biases and none on o_proj; Llama's attention_bias covers all four.
            qkv_bias=model_type == "qwen2" or attention_bias,
            o_bias=model_type != "qwen2" and attention_bias,
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            sliding_window=int(window) if window else None,
            torch_dtype=str(raw.get("torch_dtype") or raw.get("dtype") or "float32"),
            bos_token_id=raw.get("bos_token_id"),
            eos_token_ids=eos_ids,
        )


def _read_rope(raw: dict[str, Any], source: str) -> RopeConfig:
    params = raw.get("rope_parameters")
    if isinstance(params, dict) and "rope_type" not in params and "type" not in params:
        # transformers 5 may nest per-layer-type parameters; only one kind is supported.
        raise CheckpointError(f"{source}: unsupported nested rope_parameters={params!r}")
    scaling = params if isinstance(params, dict) else raw.get("rope_scaling") or {}
    theta = float((params or {}).get("rope_theta", raw.get("rope_theta", 10000.0)))
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        field = "rope_parameters.rope_type" if params else "rope_scaling.rope_type"
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


__all__ = ["LlmConfig", "RopeConfig"]
