"""Tiny GGUF files made from tiny random transformers models, the way llama.cpp makes them.

Why: the GGUF reader must match `transformers` loading the *same file*
(`from_pretrained(dir, gguf_file=...)`), and nothing may be downloaded. So a random
transformers model is written with `gguf.GGUFWriter` as llama.cpp's
convert_hf_to_gguf.py would: llama.cpp tensor names, llama's q/k rows permuted, norms
and biases F32, every matrix in the asked type, and a vocabulary (SentencePiece-style
for llama, byte-level BPE for qwen2) with scores, token types, merges and a chat
template. Blocks come from gguf_quants.py. K-quant blocks hold 256 values, so those
files use a model whose row lengths are multiples of 256 (`K_DIMS`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from support.gguf_quants import encode_any

SMALL: dict[str, Any] = {"hidden_size": 64, "intermediate_size": 160, "num_attention_heads": 4,
                         "num_key_value_heads": 2}
K_DIMS: dict[str, Any] = {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4,
                          "num_key_value_heads": 2}
TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K")
K_TYPES = ("Q4_K", "Q5_K", "Q6_K")
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                 "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                 "{% endif %}")

# --- vocabularies -------------------------------------------------------------------------

_SPM_MERGED = ["▁t", "he", "▁the", "in", "▁a", "er", "on", "an", "▁w", "or", "▁wor", "ld",
               "▁world", "▁h", "el", "lo", "ello", "▁hello", "▁H", "▁Hel", "▁Hello", "is",
               "▁is", "ing", "▁s", "▁o", "▁on", "ou", "▁you", "ed", "▁c", "at", "▁cat", "▁1",
               "12", "▁12", "▁▁", "▁▁▁▁"]
_SPM_CHARS = [*"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'-", "▁"]
_BPE_MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "o n", "Ġ w", "o r", "Ġw or", "l d",
               "Ġwor ld", "Ġ h", "e l", "l o", "el lo", "Ġh ello", "H e", "l l", "He ll", "i s",
               "Ġ is", "in g", "Ġ c", "a t", "Ġc at", "1 2", "Ċ Ċ", "Ġ Ġ"]


@dataclass(frozen=True)
class Vocab:
    model: str  # tokenizer.ggml.model
    tokens: list[str]
    types: list[int]
    scores: list[float] | None
    merges: list[str] | None
    bos: int
    eos: int
    add_bos: bool
    pre: str | None


def spm_vocab() -> Vocab:
    """Llama-2-style: <unk> <s> </s>, 256 byte tokens, characters, merged pieces."""
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *_SPM_CHARS,
              *_SPM_MERGED]
    types = [2, 3, 3, *[6] * 256, *[1] * (len(_SPM_CHARS) + len(_SPM_MERGED))]
    scores = [0.0, 0.0, 0.0, *[0.0] * 256, *(-100.0 - i for i in range(len(_SPM_CHARS))),
              *(-1.0 - i for i in range(len(_SPM_MERGED)))]
    return Vocab("llama", tokens, types, scores, None, 1, 2, True, None)


def _byte_chars() -> list[str]:
    from edge_runtime.llm.gguf.tokenizer import bytes_to_unicode

    table = bytes_to_unicode()
    return [table[b] for b in range(256)]


def bpe_vocab() -> Vocab:
    """Qwen2-style byte-level BPE: 256 byte characters, merged tokens, control tokens."""
    chars = _byte_chars()
    merged = [m.replace(" ", "") for m in _BPE_MERGES]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens = [*chars, *merged, *specials]
    types = [1] * (len(chars) + len(merged)) + [3] * len(specials)
    eos = tokens.index("<|im_end|>")
    return Vocab("gpt2", tokens, types, None, list(_BPE_MERGES), tokens.index("<|endoftext|>"),
                 eos, False, "qwen2")


# --- the model and the file ---------------------------------------------------------------


# per GGUF architecture: transformers config class, its extra fields, GGUF metadata
ARCHS: dict[str, dict[str, Any]] = {
    "llama": {"config": "LlamaConfig", "extra": {}},
    "qwen2": {"config": "Qwen2Config", "extra": {"tie_word_embeddings": True}},
    # transformers ignores qwen3.attention.key_length and keeps Qwen3's 128 (as all
    # released Qwen3 models have)
    "qwen3": {"config": "Qwen3Config", "extra": {"head_dim": 128}},
    # transformers reads no query_pre_attn_scalar from a GGUF (it keeps 256), and
    # llama.cpp scales by head_dim: head_dim 256 keeps both on the same model
    "gemma2": {"config": "Gemma2Config", "extra": {
        "head_dim": 256, "query_pre_attn_scalar": 256, "sliding_window": 4,
        "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0}},
    "gemma3": {"config": "Gemma3TextConfig", "extra": {
        "head_dim": 256, "query_pre_attn_scalar": 256, "sliding_window": 4,
        "num_hidden_layers": 6}},
    "phi3": {"config": "Phi3Config", "extra": {"pad_token_id": 0}},
}


def hf_model(arch: str, vocab: Vocab, dims: dict[str, Any], seed: int = 0,
             extra: dict[str, Any] | None = None) -> Any:
    """The random transformers model a file is made from (same seed, same weights)."""
    import torch
    import transformers

    spec = ARCHS[arch]
    cls = getattr(transformers, spec["config"])
    fields = {"num_hidden_layers": 2, "vocab_size": len(vocab.tokens),
              "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "initializer_range": 0.15,
              "bos_token_id": vocab.bos, "eos_token_id": vocab.eos, "tie_word_embeddings": False,
              "rope_theta": 10000.0, **dims, **spec["extra"], **copy.deepcopy(extra or {})}
    config = cls(**fields)
    torch.manual_seed(seed)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():  # non-trivial norms and biases, so a wrong mapping shows
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
          "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
          "self_attn.qkv_proj": "attn_qkv", "self_attn.q_norm": "attn_q_norm",
          "self_attn.k_norm": "attn_k_norm", "mlp.gate_proj": "ffn_gate",
          "mlp.up_proj": "ffn_up", "mlp.gate_up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
          "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
_GEMMA_NAMES = {**_NAMES, "post_attention_layernorm": "post_attention_norm",
                "pre_feedforward_layernorm": "ffn_norm",
                "post_feedforward_layernorm": "post_ffw_norm"}


def gguf_name(hf: str, arch: str = "llama") -> str:
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight":
           "output_norm.weight", "lm_head.weight": "output.weight"}
    if hf in top:
        return top[hf]
    _, _, layer, rest = hf.split(".", 3)
    module, leaf = rest.rsplit(".", 1)
    names = _GEMMA_NAMES if arch.startswith("gemma") else _NAMES
    return f"blk.{layer}.{names[module]}.{leaf}"


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's LlamaModel.permute (rows of q/k for its rotary kernel)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(
        w.shape)


def llama3_rope_factors(rope: dict[str, Any], head_dim: int, theta: float) -> np.ndarray:
    """llama.cpp's LlamaModel.generate_extra_tensors: Llama 3 RoPE as per-pair factors."""
    import math

    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    original = rope["original_max_position_embeddings"]
    out = []
    for freq in 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim)):
        wavelen = 2 * math.pi / freq
        if wavelen < original / high:
            out.append(1.0)
        elif wavelen > original / low:
            out.append(factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def _write_vocab(w: Any, vocab: Vocab) -> None:
    w.add_tokenizer_model(vocab.model)
    if vocab.pre:
        w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.types)
    if vocab.scores is not None:
        w.add_token_scores(vocab.scores)
    if vocab.merges is not None:
        w.add_token_merges(vocab.merges)
    w.add_bos_token_id(vocab.bos)
    w.add_eos_token_id(vocab.eos)
    w.add_add_bos_token(vocab.add_bos)


def vocab_for(arch: str) -> Vocab:
    return bpe_vocab() if arch.startswith("qwen") else spm_vocab()


def write_gguf(path: Path, arch: str, qtype: str, dims: dict[str, Any] | None = None,
               seed: int = 0, name: str = "tiny", types: dict[str, str] | None = None,
               metadata: dict[str, Any] | None = None, extra: dict[str, Any] | None = None
               ) -> Path:
    """A GGUF of a random `arch` model (SentencePiece vocabulary, or byte-level BPE for
    Qwen) with every matrix in `qtype`; reused when already written.

    `types`: GGUF tensor name -> another type (one gguf-py cannot quantize is written
    as zero blocks: for refusal tests); `metadata`: extra keys (str, float or int);
    `extra`: transformers config fields (a llama3 `rope_scaling` is written as llama.cpp
    writes it: per-frequency factors in rope_freqs.weight)."""
    if path.is_file():
        return path
    import gguf

    vocab = vocab_for(arch)
    dims = dims or (K_DIMS if qtype in K_TYPES else SMALL)
    model = hf_model(arch, vocab, dims, seed, extra)
    cfg = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(name)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(10000.0)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    if arch == "llama":
        w.add_rope_dimension_count(head_dim)
        w.add_vocab_size(len(vocab.tokens))
    if arch in ("qwen3", "gemma2", "gemma3"):
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    if arch.startswith("gemma"):
        w.add_sliding_window(cfg.sliding_window)
    if arch == "gemma2":
        w.add_attn_logit_softcapping(cfg.attn_logit_softcapping)
        w.add_final_logit_softcapping(cfg.final_logit_softcapping)
    for key, value in (metadata or {}).items():
        if isinstance(value, str):
            w.add_string(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        else:
            w.add_uint32(key, int(value))
    _write_vocab(w, vocab)
    if arch == "phi3":
        w.add_pad_token_id(0)
    w.add_chat_template(CHAT_TEMPLATE)
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    rope = (extra or {}).get("rope_scaling")
    if rope and rope.get("rope_type") == "llama3":
        w.add_tensor("rope_freqs.weight", llama3_rope_factors(rope, head_dim, 10000.0))
    if cfg.tie_word_embeddings or arch.startswith("gemma"):
        state.pop("lm_head.weight", None)
    for hf, value in state.items():
        if arch == "llama" and (".q_proj." in hf or ".k_proj." in hf):
            heads = cfg.num_attention_heads if ".q_proj." in hf else cfg.num_key_value_heads
            value = _permute(value, heads)
        if arch.startswith("gemma") and hf.endswith("norm.weight"):
            value = value + 1.0  # llama.cpp's Gemma converters store 1 + w
        if value.ndim == 1:
            w.add_tensor(gguf_name(hf, arch), np.ascontiguousarray(value, dtype=np.float32))
        else:
            data, kind = encode_any(value, (types or {}).get(gguf_name(hf, arch), qtype))
            w.add_tensor(gguf_name(hf, arch), data, raw_dtype=kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def transformers_model(path: Path) -> Any:
    """transformers' model of the GGUF (it dequantizes every tensor), fp32, eager."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                 dtype=torch.float32, attn_implementation="eager")
    return model.eval()


def model_logits(model: Any, ids: list[int]) -> np.ndarray:
    """A transformers model's fp32 logits [len(ids), vocab]."""
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids])).logits[0]
    return np.asarray(out.float().numpy())


def transformers_logits(path: Path, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = transformers_model(path)(input_ids=torch.tensor([ids])).logits[0]
    return np.asarray(out.float().numpy())


def transformers_greedy(path: Path, ids: list[int], max_new_tokens: int) -> list[int]:
    import torch

    model = transformers_model(path)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids),
                             dtype=torch.long), max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=0)
    new: list[int] = out[0, len(ids):].tolist()
    eos = model.generation_config.eos_token_id
    stops = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    for i, t in enumerate(new):
        if t in stops:
            return new[: i + 1]
    return new


def transformers_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def write_vocab_only(path: Path, arch: str, vocab: Vocab) -> Path:
    """A GGUF holding only an architecture's vocabulary (tokenizer tests)."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("vocab")
    _write_vocab(w, vocab)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
