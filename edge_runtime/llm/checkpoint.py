"""Reading Hugging Face safetensors checkpoints (single file or sharded) without torch.

Why our own reader: safetensors' numpy backend cannot represent bf16, and we want
every tensor name, dtype and shape checked against the config *before* a byte of
weights is read. The format is simple — 8-byte little-endian header length, a JSON
header (`dtype`, `shape`, `data_offsets` per tensor), then raw little-endian data — so
tensors are memory-mapped straight from the files and converted to fp32 on access.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.errors import CheckpointError
from edge_runtime.llm.config import LlmConfig

log = logging.getLogger(__name__)

_DTYPES: dict[str, np.dtype[np.generic]] = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # widened to fp32 by bit shift in `tensor()`
    "F64": np.dtype("<f8"),
}
_MAX_HEADER = 100 * 1024 * 1024
# Non-weight buffers some exporters write; the engine computes them itself.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lies: file, dtype tag, shape and byte range of its data."""

    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


def expected_tensors(config: LlmConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor name a checkpoint of `config` must hold, with its shape."""
    h, q, kv = config.hidden, config.heads * config.head_dim, config.kv_heads * config.head_dim
    out: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (config.vocab, h),
        "model.norm.weight": (h,),
    }
    if not config.tie_word_embeddings:
        out["lm_head.weight"] = (config.vocab, h)
    for i in range(config.layers):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = (h,)
        out[p + "post_attention_layernorm.weight"] = (h,)
        out[p + "self_attn.q_proj.weight"] = (q, h)
        out[p + "self_attn.k_proj.weight"] = (kv, h)
        out[p + "self_attn.v_proj.weight"] = (kv, h)
        out[p + "self_attn.o_proj.weight"] = (h, q)
        if config.qkv_bias:
            out[p + "self_attn.q_proj.bias"] = (q,)
            out[p + "self_attn.k_proj.bias"] = (kv,)
            out[p + "self_attn.v_proj.bias"] = (kv,)
        if config.o_bias:
            out[p + "self_attn.o_proj.bias"] = (h,)
        out[p + "mlp.gate_proj.weight"] = (config.intermediate, h)
        out[p + "mlp.up_proj.weight"] = (config.intermediate, h)
        out[p + "mlp.down_proj.weight"] = (h, config.intermediate)
    return out


def _read_header(path: Path) -> tuple[dict[str, TensorInfo], bytes]:
    try:
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise CheckpointError(f"{path} is truncated: no safetensors header")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER:
                raise CheckpointError(f"{path}: safetensors header of {n} bytes is not plausible")
            raw = f.read(n)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    try:
        header = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: safetensors header is not JSON ({exc})") from exc
    size = path.stat().st_size
    base = 8 + n
    infos: dict[str, TensorInfo] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dtype = meta.get("dtype")
        if dtype not in _DTYPES:
            raise CheckpointError(
                f"{path}: tensor {name} has dtype {dtype}; supported: F32, F16, BF16, F64"
            )
        start, end = (int(x) for x in meta["data_offsets"])
        shape = tuple(int(x) for x in meta["shape"])
        if end - start != int(np.prod(shape)) * _DTYPES[dtype].itemsize or base + end > size:
            raise CheckpointError(f"{path}: tensor {name} has a bad byte range (file truncated?)")
        infos[name] = TensorInfo(path, dtype, shape, base + start, base + end)
    return infos, raw


class Checkpoint:
    """A validated checkpoint directory: config plus the location of every tensor."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise CheckpointError(f"{self.directory} is not a directory")
        self.config = LlmConfig.from_checkpoint(self.directory)
        self.tensors: dict[str, TensorInfo] = {}
        digest = hashlib.sha256((self.directory / "config.json").read_bytes())
        for path in self._files():
            infos, raw_header = _read_header(path)
            digest.update(raw_header)
            digest.update(str(path.stat().st_size).encode())
            self.tensors.update(infos)
        # Identity of the weights without hashing gigabytes: config, every header
        # (names, dtypes, shapes, offsets) and file sizes.
        self.digest = digest.hexdigest()
        self._validate()
        self._maps: dict[Path, np.memmap[tuple[int], np.dtype[np.uint8]]] = {}

    def _files(self) -> list[Path]:
        index = self.directory / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (OSError, json.JSONDecodeError, KeyError) as exc:
                raise CheckpointError(f"{index} is not a valid shard index: {exc}") from exc
            files = sorted({self.directory / f for f in weight_map.values()})
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise CheckpointError(
                    f"{self.directory}: shard(s) {', '.join(missing)} named in {index.name} "
                    "are missing; copy the complete checkpoint"
                )
            return files
        single = self.directory / "model.safetensors"
        if single.is_file():
            return [single]
        found = sorted(self.directory.glob("*.safetensors"))
        if found:
            return found
        raise CheckpointError(
            f"{self.directory}: no model.safetensors or model.safetensors.index.json "
            "(PyTorch .bin checkpoints are not read: re-save with safe_serialization=True)"
        )

    def _validate(self) -> None:
        expected = expected_tensors(self.config)
        problems: list[str] = []
        for name, shape in expected.items():
            info = self.tensors.get(name)
            if info is None:
                problems.append(f"missing {name}")
            elif info.shape != shape:
                problems.append(f"{name} has shape {list(info.shape)}, config says {list(shape)}")
        extra = [n for n in self.tensors if n not in expected and not n.endswith(_IGNORED_SUFFIXES)]
        if self.config.tie_word_embeddings and "lm_head.weight" in extra:
            extra.remove("lm_head.weight")
        problems += [f"unexpected {n}" for n in sorted(extra)]
        if problems:
            shown = "; ".join(problems[:5]) + (
                f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
            )
            raise CheckpointError(
                f"{self.directory}: tensors do not match config.json ({shown}); "
                "the config and the weights must come from the same model"
            )

    def _raw(self, name: str) -> np.ndarray:
        info = self.tensors[name]
        mm = self._maps.get(info.file)
        if mm is None:
            mm = np.memmap(info.file, dtype=np.uint8, mode="r")
            self._maps[info.file] = mm
        return np.asarray(mm[info.start : info.end]).view(_DTYPES[info.dtype]).reshape(info.shape)

    def tensor(self, name: str) -> np.ndarray:
        """The tensor as a float32 array (a memory-mapped view when it is stored as F32)."""
        info = self.tensors.get(name)
        if info is None:
            raise CheckpointError(f"{self.directory}: no tensor {name}")
        raw = self._raw(name)
        if info.dtype == "BF16":
            return (raw.astype(np.uint32) << 16).view(np.float32)
        if info.dtype == "F32":
            return raw
        return raw.astype(np.float32)

    def lm_head_name(self) -> str:
        """The tensor holding the LM head rows (the embedding when they are tied)."""
        return "model.embed_tokens.weight" if self.config.tie_word_embeddings else "lm_head.weight"


__all__ = ["Checkpoint", "TensorInfo", "expected_tensors"]
