"""A `tokenizer.json` (and `tokenizer_config.json`) from a GGUF file's vocabulary.

Why we build it: a GGUF carries no tokenizer.json, only llama.cpp's description — the
token strings, their scores or BPE merges, token types and special ids. The two models
llama.cpp uses for the architectures we read are rebuilt as `tokenizers` pipelines the
way transformers' GGUF integration builds them, so an encoding matches transformers'
tokenizer loaded from the same file:
- `llama` (SentencePiece vocabularies: Llama 2, Mistral, Gemma, Phi-3): BPE with byte
  fallback and merges derived from the scores (higher score merges first), a metaspace
  `▁` for spaces; Gemma keeps spaces as they are (no prefix) and Phi-3 prepends `▁`
  with a normalizer.
- `gpt2` (byte-level BPE: Llama 3, Qwen): merges from the file, the split regex named by
  `tokenizer.ggml.pre`, and bytes mapped to printable characters.
Control tokens (type 3) become special tokens; user-defined ones (type 4, e.g.
`<think>`) added tokens, so neither is split. BOS/EOS are added as the file says.
"""

from __future__ import annotations

from typing import Any

from edge_runtime.errors import CheckpointError
from edge_runtime.llm.gguf.reader import GgufFile

_CONTROL, _USER_DEFINED = 3, 4
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# `tokenizer.ggml.pre` -> the regex its merges were learned with (others: GPT-2's own)
PRE_TOKENIZER_SPLITS = {
    "llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT,
}
TOKENIZER_MODELS = ("llama", "gpt2")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map of the 256 byte values to printable characters."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    codes = keep[:]
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(keep, (chr(c) for c in codes), strict=True))


def merges_from_scores(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """BPE merges implied by a SentencePiece vocabulary: every split of a token into two
    tokens, the token with the higher score merging first (transformers' rule)."""
    vocab = {t: i for i, t in enumerate(tokens)}
    score = dict(zip(tokens, scores, strict=True))
    merges: list[tuple[str, str, float]] = []
    for piece, piece_score in score.items():
        local = [(piece[:k], piece[k:], piece_score) for k in range(1, len(piece))
                 if piece[:k] in vocab and piece[k:] in vocab]
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(a, b) for a, b, _ in merges]


def _spm(gguf: GgufFile, tokens: list[str]) -> Any:
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    arch = gguf.architecture
    scores = gguf.metadata.get("tokenizer.ggml.scores")
    if not isinstance(scores, list) or len(scores) != len(tokens):
        raise CheckpointError(f"{gguf.path}: tokenizer.ggml.scores is missing or not one "
                              "score per token")
    vocab_scores = [float(s) for s in scores]
    unk: dict[str, str] = {}
    if arch.startswith("gemma"):
        # Gemma stores runs of spaces as spaces and lists merges in file order
        tokens = ["▁" * len(t) if " " in t and not t.strip() else t for t in tokens]
        vocab_scores = [-float(i) for i in range(len(tokens))]
        unk_id = gguf.metadata.get("tokenizer.ggml.unknown_token_id")
        if isinstance(unk_id, int):
            unk = {"unk_token": tokens[unk_id]}
    merges = merges_from_scores(tokens, vocab_scores)
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, fuse_unk=True, byte_fallback=True,
                        dropout=None, **unk))
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if arch.startswith("gemma"):
        tok.normalizer = normalizers.Replace(" ", "▁")
        tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    elif arch == "phi3":
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                               normalizers.Replace(" ", "▁")])
        steps.append(decoders.Strip(" ", 1, 0))
    else:
        prefix = gguf.metadata.get("tokenizer.ggml.add_space_prefix", True)
        tok.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement="▁", prepend_scheme="first" if prefix else "never", split=False)
        if prefix:
            steps.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(steps)
    return tok


def _byte_level(gguf: GgufFile, tokens: list[str]) -> Any:
    from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE

    spelling = bytes_to_unicode()
    alphabet = set(spelling.values())
    vocab = {(t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode())): i
             for i, t in enumerate(tokens)}
    raw = gguf.metadata.get("tokenizer.ggml.merges")
    if not isinstance(raw, list):
        raise CheckpointError(f"{gguf.path}: byte-level BPE without tokenizer.ggml.merges")
    merges = []
    for line in raw:
        left, sep, right = str(line).partition(" ")
        if not sep:
            raise CheckpointError(f"{gguf.path}: merge {line!r} is not two tokens")
        merges.append((left, right))
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                        end_of_word_suffix="", fuse_unk=False))
    split = PRE_TOKENIZER_SPLITS.get(str(gguf.metadata.get("tokenizer.ggml.pre")))
    if split is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    return tok


def _special(gguf: GgufFile, key: str, tokens: list[str]) -> str | None:
    index = gguf.metadata.get(f"tokenizer.ggml.{key}_token_id")
    return tokens[index] if isinstance(index, int) and 0 <= index < len(tokens) else None


def _flags(gguf: GgufFile, model: str) -> tuple[bool, bool]:
    """(add_bos, add_eos): what the file says; SentencePiece files default to BOS."""
    bos = gguf.metadata.get("tokenizer.ggml.add_bos_token")
    eos = gguf.metadata.get("tokenizer.ggml.add_eos_token")
    return (bool(bos) if bos is not None else model == "llama"), bool(eos)


def build_tokenizer(gguf: GgufFile) -> Any:
    """The `tokenizers.Tokenizer` the file describes; `CheckpointError` if it cannot."""
    from tokenizers import AddedToken, processors

    model = gguf.metadata.get("tokenizer.ggml.model")
    tokens = gguf.metadata.get("tokenizer.ggml.tokens")
    if model not in TOKENIZER_MODELS:
        raise CheckpointError(f"{gguf.path}: unsupported tokenizer.ggml.model={model!r}; "
                              f"supported: {', '.join(TOKENIZER_MODELS)}")
    if not isinstance(tokens, list) or not tokens:
        raise CheckpointError(f"{gguf.path}: no tokenizer.ggml.tokens")
    tokens = [str(t) for t in tokens]
    tok = _spm(gguf, tokens) if model == "llama" else _byte_level(gguf, tokens)
    types = gguf.metadata.get("tokenizer.ggml.token_type") or []
    alphabet = set(bytes_to_unicode().values()) if model == "gpt2" else None
    control = [AddedToken(t, normalized=False, special=True)
               for t, kind in zip(tokens, types, strict=False)
               if kind == _CONTROL and (alphabet is None or set(t) <= alphabet)]
    if control:
        tok.add_special_tokens(control)
    vocab = tok.get_vocab()
    user = [AddedToken(t, normalized=False, special=False)
            for t, kind in zip(tokens, types, strict=False) if kind == _USER_DEFINED and t in vocab]
    if user:
        tok.add_tokens(user)
    add_bos, add_eos = _flags(gguf, model)
    bos, eos = _special(gguf, "bos", tokens), _special(gguf, "eos", tokens)
    add_bos, add_eos = add_bos and bos is not None, add_eos and eos is not None
    single = " ".join([*(["$bos:0"] if add_bos else []), "$A:0", *(["$eos:0"] if add_eos else [])])
    pair = single + " " + " ".join(
        [*(["$bos:1"] if add_bos else []), "$B:1", *(["$eos:1"] if add_eos else [])])
    specials = []
    if add_bos and bos is not None:
        single, pair = single.replace("$bos", bos), pair.replace("$bos", bos)
        specials.append((bos, tok.token_to_id(bos)))
    if add_eos and eos is not None:
        single, pair = single.replace("$eos", eos), pair.replace("$eos", eos)
        specials.append((eos, tok.token_to_id(eos)))
    tok.post_processor = processors.TemplateProcessing(single=single, pair=pair,
                                                       special_tokens=specials)
    return tok


def tokenizer_config(gguf: GgufFile) -> dict[str, Any]:
    """tokenizer_config.json: special tokens, BOS/EOS flags and the chat template."""
    model = str(gguf.metadata.get("tokenizer.ggml.model"))
    tokens = [str(t) for t in gguf.metadata.get("tokenizer.ggml.tokens") or []]
    add_bos, add_eos = _flags(gguf, model)
    out: dict[str, Any] = {"add_bos_token": add_bos, "add_eos_token": add_eos,
                           "tokenizer_class": "PreTrainedTokenizerFast"}
    for name, key in (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"),
                      ("pad_token", "padding")):
        text = _special(gguf, key, tokens)
        if text is not None:
            out[name] = text
    template = gguf.metadata.get("tokenizer.chat_template")
    if isinstance(template, str):
        out["chat_template"] = template
    return out


__all__ = ["PRE_TOKENIZER_SPLITS", "TOKENIZER_MODELS", "build_tokenizer", "bytes_to_unicode",
           "merges_from_scores", "tokenizer_config"]
