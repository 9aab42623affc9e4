"""What the engine needs to know about a decoder-only checkpoint, read from its config.json.

Why a record of our own: the engine must not depend on `transformers`, and the
architectures we run differ in a handful of fields. Llama 2/3, Mistral and Qwen2 differ
in attention biases, sliding window and RoPE scaling; Qwen3 adds per-head q/k RMSNorm;
Gemma 2/3 use GeGLU (gelu_pytorch_tanh), scale embeddings by sqrt(hidden), keep RMSNorm
weights as (1 + w), normalise the attention and MLP outputs too, soft-cap attention
scores and final logits, scale queries by query_pre_attn_scalar and alternate local
sliding-window and global layers (Gemma 3: with their own RoPE theta, and q/k norms);
Phi-3 stores q/k/v and gate/up fused; Qwen3-MoE and Mixtral replace the MLP by a
router and experts (`moe.py`; both store each expert's matrices apart, under their own
names, and Mixtral always renormalises the top-k weights). `ARCHITECTURES` says what
each `model_type` fixes; everything else is read from the config's fields — and any
field whose value would change the math in a way we do not run is refused by name,
before anything is loaded. That is what keeps a silently wrong forward pass
impossible.

Both config spellings are read: transformers 4.x (`rope_theta` + `rope_scaling`) and
5.x (`rope_parameters`, nested per layer type for Gemma 3), by `rope_config`.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime.errors import CheckpointError
from edge_runtime.llm.rope_config import (
    FULL,
    SLIDING,
    RopeConfig,
    check_partial_rotary,
    read_gemma3_rope,
    read_rope,
)
from partitioner.tensor import DecoderShape

log = logging.getLogger(__name__)

SUPPORTED_ACTIVATIONS = ("silu", "gelu_pytorch_tanh")


@dataclass(frozen=True)
class Architecture:
    """What a `model_type` fixes about the math; the rest is read from config fields."""

    qkv_bias: bool = False  # q/k/v biases whatever attention_bias says (Qwen2)
    attention_bias: bool = True  # attention_bias puts biases on q/k/v/o (Llama style)
    qk_norm: bool = False  # per-head RMSNorm of q and k before RoPE (Qwen3, Gemma 3)
    gemma: bool = False  # (1 + w) norms, sqrt(hidden) embeddings, sandwich norms, caps
    fused: bool = False  # qkv_proj and gate_up_proj in the checkpoint (Phi-3)
    windows: str = "none"  # "all" layers, per "layer_types", "refused" when used, "none"
    window_pattern: int = 2  # Gemma: every n-th layer is global when layer_types is absent
    local_rope: bool = False  # sliding layers have their own RoPE (Gemma 3)
    # mixture of experts: the layer's module holding router and experts ("" = dense MLP),
    # each expert's gate, up and down matrix names, and whether top-k weights always sum to 1
    moe_block: str = ""
    expert_names: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")
    always_norm_topk: bool = False


ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture(),
    "mistral": Architecture(windows="all"),
    "qwen2": Architecture(qkv_bias=True, attention_bias=False, windows="refused"),
    "qwen3": Architecture(qk_norm=True, windows="refused"),
    "gemma2": Architecture(gemma=True, windows="layer_types"),
    "gemma3_text": Architecture(gemma=True, qk_norm=True, windows="layer_types",
                                window_pattern=6, local_rope=True),
    "phi3": Architecture(fused=True, attention_bias=False, windows="all"),
    "qwen3_moe": Architecture(qk_norm=True, windows="refused", moe_block="mlp"),
    "mixtral": Architecture(attention_bias=False, windows="all", moe_block="block_sparse_moe",
                            expert_names=("w1", "w3", "w2"), always_norm_topk=True),
}
SUPPORTED_MODEL_TYPES = tuple(ARCHITECTURES)


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
    hidden_act: str = "silu"  # the MLP is act(gate) * up: "silu" or "gelu_pytorch_tanh"
    qk_norm: bool = False  # q_norm / k_norm over each head before RoPE
    sandwich_norms: bool = False  # post-attention, pre- and post-feedforward norms (Gemma)
    norm_offset: float = 0.0  # RMSNorm multiplies by (offset + w): 1.0 for Gemma
    embed_scale: float = 1.0  # embeddings are multiplied by it (sqrt(hidden) for Gemma)
    fused_projections: bool = False  # qkv_proj / gate_up_proj tensors (Phi-3)
    query_pre_attn_scalar: float | None = None  # scores scale 1/sqrt(this), else head_dim
    attn_softcap: float | None = None  # scores -> cap * tanh(scores / cap)
    final_softcap: float | None = None  # logits -> cap * tanh(logits / cap)
    sliding_layers: tuple[bool, ...] = ()  # per layer; () = every layer (when windowed)
    local_rope: RopeConfig | None = None  # RoPE of the sliding layers, if their own
    # mixture of experts (`moe.py`): experts per layer (0 = a dense MLP), how many run per
    # token, the width of each, whether the top-k routing weights are renormalised to sum
    # to 1, the module holding them and each expert's gate/up/down names
    experts: int = 0
    experts_per_token: int = 0
    expert_intermediate: int = 0
    norm_topk_prob: bool = False
    moe_block: str = ""
    expert_names: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")

    @property
    def group_size(self) -> int:
        """Query heads per KV head (GQA group)."""
        return self.heads // self.kv_heads

    @property
    def attention_scale(self) -> float:
        """The factor of q.k: 1/sqrt(query_pre_attn_scalar or head_dim)."""
        return 1.0 / math.sqrt(self.query_pre_attn_scalar or self.head_dim)

    def layer_window(self, layer: int) -> int | None:
        """The sliding window of `layer` (None: it attends to the whole context)."""
        if self.sliding_layers and not self.sliding_layers[layer]:
            return None
        return self.sliding_window

    def layer_rope(self, layer: int) -> RopeConfig:
        """The RoPE parameters of `layer` (Gemma 3's local layers have their own)."""
        if self.local_rope is not None and self.layer_window(layer) is not None:
            return self.local_rope
        return self.rope

    def router_tensor(self, layer: int) -> str:
        """The checkpoint name of layer `layer`'s router matrix [experts, hidden]."""
        return f"model.layers.{layer}.{self.moe_block}.gate.weight"

    def expert_tensors(self, layer: int, expert: int) -> tuple[str, str, str]:
        """The checkpoint names of one expert's gate, up and down matrices."""
        p = f"model.layers.{layer}.{self.moe_block}.experts.{expert}."
        return tuple(f"{p}{n}.weight" for n in self.expert_names)  # type: ignore[return-value]

    def decoder_shape(self, max_context: int) -> DecoderShape:
        """The planner's view of this model (fp32 weights after conversion). A mixture of
        experts is `experts` x `expert_intermediate` MLP columns, whole experts at a time."""
        return DecoderShape(
            hidden=self.hidden,
            intermediate=self.experts * self.expert_intermediate if self.experts
            else self.intermediate,
            layers=self.layers,
            heads=self.heads,
            kv_heads=self.kv_heads,
            head_dim=self.head_dim,
            vocab=self.vocab,
            bytes_per_element=4,
            max_context=max_context,
            experts=self.experts,
            experts_per_token=self.experts_per_token,
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
        arch = ARCHITECTURES.get(model_type) if isinstance(model_type, str) else None
        if arch is None:
            hint = f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
            if model_type == "gemma3":
                hint += " (the multimodal Gemma 3 is not run: use a text-only gemma3_text one)"
            raise bad("model_type", model_type, hint)
        act_key = "hidden_activation" if arch.gemma and raw.get("hidden_activation") else \
            "hidden_act"
        act = raw.get(act_key, "gelu_pytorch_tanh" if arch.gemma else "silu")
        if act not in SUPPORTED_ACTIVATIONS:
            raise bad(act_key, act, f"the gated MLP runs {' or '.join(SUPPORTED_ACTIVATIONS)}")
        if raw.get("mlp_bias", False):
            raise bad("mlp_bias", True, "MLPs without biases only")
        check_partial_rotary(raw, source)
        if arch.windows == "refused" and raw.get("use_sliding_window", False):
            raise bad("use_sliding_window", True,
                      f"{model_type} per-layer sliding windows are not run")
        if raw.get("use_bidirectional_attention"):
            raise bad("use_bidirectional_attention", raw["use_bidirectional_attention"],
                      "only causal attention runs")
        if not arch.gemma:
            for field in ("attn_logit_softcapping", "final_logit_softcapping",
                          "query_pre_attn_scalar"):
                if raw.get(field) is not None:
                    raise bad(field, raw[field], f"{model_type} does not use it in transformers")

        def need_int(name: str) -> int:
            value = raw.get(name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise CheckpointError(f"{source}: {name} must be a positive integer, got {value!r}")
            return value

        hidden = need_int("hidden_size")
        heads = need_int("num_attention_heads")
        layers = need_int("num_hidden_layers")
        kv_heads = int(raw.get("num_key_value_heads") or heads)
        if kv_heads <= 0 or heads % kv_heads:
            raise bad("num_key_value_heads", kv_heads, f"must divide num_attention_heads={heads}")
        head_dim = raw.get("head_dim") or hidden // heads
        if not isinstance(head_dim, int) or head_dim % 2:
            raise bad("head_dim", head_dim, "must be an even integer")
        if arch.local_rope:
            rope, local_rope = read_gemma3_rope(raw, source)
        else:
            rope, local_rope = read_rope(raw, source), None
        window, sliding = _read_windows(raw, arch, layers, source)
        moe = _read_experts(raw, arch, str(model_type), source)
        eos = raw.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
        attention_bias = arch.attention_bias and bool(raw.get("attention_bias", False))
        return cls(
            model_type=str(model_type),
            hidden=hidden,
            intermediate=need_int("intermediate_size"),
            layers=layers,
            heads=heads,
            kv_heads=kv_heads,
            head_dim=head_dim,
            vocab=need_int("vocab_size"),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope=rope,
            max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
            # Qwen2 has q/k/v biases and none on o_proj; attention_bias covers all four.
            qkv_bias=arch.qkv_bias or attention_bias,
            o_bias=attention_bias,
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            sliding_window=window,
            torch_dtype=str(raw.get("torch_dtype") or raw.get("dtype") or "float32"),
            bos_token_id=raw.get("bos_token_id"),
            eos_token_ids=eos_ids,
            hidden_act=str(act),
            qk_norm=arch.qk_norm,
            sandwich_norms=arch.gemma,
            norm_offset=1.0 if arch.gemma else 0.0,
            embed_scale=math.sqrt(hidden) if arch.gemma else 1.0,
            fused_projections=arch.fused,
            query_pre_attn_scalar=_positive(raw, "query_pre_attn_scalar", source)
            if arch.gemma else None,
            attn_softcap=_positive(raw, "attn_logit_softcapping", source),
            final_softcap=_positive(raw, "final_logit_softcapping", source),
            sliding_layers=sliding,
            local_rope=local_rope,
            **moe,
        )


# Fields of mixture-of-experts configs that change the math when set and are not run.
_SHARED_EXPERT_FIELDS = ("shared_expert_intermediate_size", "n_shared_experts",
                         "num_shared_experts", "moe_shared_expert_intermediate_size")


def _read_experts(raw: dict[str, Any], arch: Architecture, model_type: str,
                  source: str) -> dict[str, Any]:
    """The LlmConfig fields of a mixture of experts ({} for a dense model); any field
    that would put a dense MLP in some layers or add shared experts is refused by name."""
    for field in _SHARED_EXPERT_FIELDS:
        if raw.get(field):
            raise CheckpointError(f"{source}: unsupported {field}={raw[field]!r}; shared "
                                  "experts are not run (Qwen3-MoE and Mixtral have none)")
    if not arch.moe_block:
        return {}
    if raw.get("mlp_only_layers"):
        raise CheckpointError(f"{source}: unsupported mlp_only_layers={raw['mlp_only_layers']!r}"
                              "; every layer must be a mixture of experts (use [])")
    step = raw.get("decoder_sparse_step", 1)
    if step != 1:
        raise CheckpointError(f"{source}: unsupported decoder_sparse_step={step!r}; every "
                              "layer must be a mixture of experts (use 1)")
    count = raw.get("num_local_experts", raw.get("num_experts"))
    per_token = raw.get("num_experts_per_tok")
    # Mixtral's experts are intermediate_size wide; Qwen3-MoE's moe_intermediate_size
    width_key = "moe_intermediate_size" if model_type == "qwen3_moe" else "intermediate_size"
    width = raw.get(width_key)
    counts: list[int] = []
    for name, value in (("num_experts", count), ("num_experts_per_tok", per_token),
                        (width_key, width)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise CheckpointError(f"{source}: {model_type} needs a positive integer {name}, "
                                  f"got {value!r}")
        counts.append(value)
    count, per_token, width = counts
    if per_token > count:
        raise CheckpointError(f"{source}: num_experts_per_tok={per_token} exceeds the "
                              f"{count} experts")
    return {"experts": count, "experts_per_token": per_token, "expert_intermediate": width,
            "norm_topk_prob": arch.always_norm_topk or bool(raw.get("norm_topk_prob", False)),
            "moe_block": arch.moe_block, "expert_names": arch.expert_names}


def _positive(raw: dict[str, Any], name: str, source: str) -> float | None:
    value = raw.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise CheckpointError(f"{source}: {name} must be a positive number or null, "
                              f"got {value!r}")
    return float(value)


def _read_windows(raw: dict[str, Any], arch: Architecture, layers: int,
                  source: str) -> tuple[int | None, tuple[bool, ...]]:
    """The sliding window size and which layers use it (() = every layer)."""
    if arch.windows not in ("all", "layer_types"):
        return None, ()
    window = raw.get("sliding_window")
    if window is None:
        return None, ()
    if isinstance(window, bool) or not isinstance(window, int) or window <= 0:
        raise CheckpointError(f"{source}: sliding_window must be a positive integer or null, "
                              f"got {window!r}")
    if arch.windows == "all":
        return window, ()
    types = raw.get("layer_types")
    if types is None:
        pattern = int(raw.get("sliding_window_pattern") or raw.get("_sliding_window_pattern")
                      or arch.window_pattern)
        types = [SLIDING if (i + 1) % pattern else FULL for i in range(layers)]
    if not isinstance(types, list) or len(types) != layers:
        raise CheckpointError(f"{source}: layer_types must list one type per layer "
                              f"({layers}), got {types!r}")
    unknown = sorted({t for t in types if t not in (FULL, SLIDING)}, key=str)
    if unknown:
        raise CheckpointError(f"{source}: unsupported layer_types entry {unknown[0]!r}; "
                              f"supported: {FULL}, {SLIDING}")
    return window, tuple(t == SLIDING for t in types)


__all__ = ["ARCHITECTURES", "Architecture", "LlmConfig", "RopeConfig"]
