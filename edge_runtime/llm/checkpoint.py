"""Reading Hugging Face safetensors checkpoints (single file or sharded) without torch.

Why our own reader: safetensors' numpy backend cannot represent bf16, and we want
every tensor name, dtype and shape checked against the config *before* a byte of
weights is read. The format is simple — 8-byte little-endian header length, a JSON
header (`dtype`, `shape`, `data_offsets` per tensor), then raw little-endian data — so
tensors are memory-mapped straight from the files and converted to fp32 on access.

The checkpoint's identity (`Checkpoint.digest`) covers every byte of every file an agent
reads (config, shard index, weights): the sha256 of each file, streamed in 1 MiB chunks,
combined by `content_digest`. Why full content: a digest of headers and sizes let two
checkpoints with different weights share a name, so an agent could serve one under the
other's digest. Hashing gigabytes on every deploy would be slow, so each file's sha256 is
cached by its identity (path, size, mtime_ns, inode) in a small JSON file (`FileHashes`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from devices.cache import ENV_CACHE_DIR
from edge_runtime.errors import CheckpointError
from edge_runtime.llm.config import LlmConfig
from partitioner.plan import sha256_file

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
INDEX_NAME = "model.safetensors.index.json"
# Domain tag of the content digest: bumped if what it covers ever changes.
_DIGEST_TAG = b"edge-runtime checkpoint content v2\n"
# Files remembered by a hash cache; the oldest are forgotten first (then re-hashed).
HASH_CACHE_ENTRIES = 4096


def default_hash_cache() -> Path:
    """$EDGE_RUNTIME_CACHE_DIR/file-hashes.json, else ~/.cache/edge-runtime/file-hashes.json."""
    base = os.environ.get(ENV_CACHE_DIR)
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "edge-runtime"
    return root / "file-hashes.json"


def content_digest(files: Iterable[tuple[str, str]]) -> str:
    """The checkpoint digest of `(file name, sha256 of its bytes)` pairs (order-free).

    Both sides compute it: the coordinator from its files, the agent from the sha256 of
    each file it received (checked on arrival), so a set of files that differs from the
    announced one in any byte, name or member is refused before anything is converted."""
    digest = hashlib.sha256(_DIGEST_TAG)
    for name, sha256 in sorted(files):
        digest.update(f"{name}\0{sha256}\n".encode())
    return digest.hexdigest()


class FileHashes:
    """sha256 of files remembered by identity (path, size, mtime_ns, inode), as JSON.

    Why: re-deploying a multi-GB checkpoint must not re-read it each time; any write to a
    file changes its mtime (and a replaced file its inode), so a changed file is hashed
    again. One instance per cache file per process (`at`), thread-safe; a corrupt or
    unwritable cache file is ignored (files are then simply hashed)."""

    _instances: ClassVar[dict[Path, FileHashes]] = {}
    _instances_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._entries: dict[str, list[object]] | None = None

    @classmethod
    def at(cls, path: Path | None = None) -> FileHashes:
        """The process's instance for the cache file `path` (default `default_hash_cache()`)."""
        path = path or default_hash_cache()
        with cls._instances_lock:
            return cls._instances.setdefault(path, cls(path))

    @staticmethod
    def _identity(file: Path) -> tuple[str, list[object]]:
        st = file.stat()
        return str(file.resolve()), [st.st_size, st.st_mtime_ns, st.st_ino]

    def _read(self) -> dict[str, list[object]]:
        try:
            doc = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(doc, dict):
            return {}
        return {k: v for k, v in doc.items() if isinstance(v, list) and len(v) == 4}

    def sha256(self, file: Path) -> str:
        """The file's sha256: remembered if its identity is unchanged, else hashed now."""
        key, ident = self._identity(file)
        with self._lock:
            if self._entries is None:
                self._entries = self._read()
            known = self._entries.get(key)
        if known is not None and known[:3] == ident:
            return str(known[3])
        actual = sha256_file(file)
        self._store(key, ident, actual)
        return actual

    def remember(self, file: Path, sha256: str) -> None:
        """Record a sha256 just verified by the caller (e.g. a file received and checked)."""
        key, ident = self._identity(file)
        self._store(key, ident, sha256)

    def _store(self, key: str, ident: list[object], sha256: str) -> None:
        with self._lock:
            entries = self._read()  # merge what other processes wrote meanwhile
            entries.pop(key, None)
            entries[key] = [*ident, sha256]
            while len(entries) > HASH_CACHE_ENTRIES:
                del entries[next(iter(entries))]
            self._entries = entries
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.{threading.get_ident()}")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                tmp.write_text(json.dumps(entries))
                os.replace(tmp, self.path)
            except OSError as error:
                log.debug("hash cache %s not written: %s", self.path, error)
                tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lies: file, dtype tag, shape and byte range of its data."""

    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


def expected_tensors(config: LlmConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor name a checkpoint of `config` must hold, with its shape.

    The names are Hugging Face's for each architecture: Phi-3 fuses q/k/v into
    `qkv_proj` and gate/up into `gate_up_proj`; Qwen3 and Gemma 3 add `q_norm`/`k_norm`
    over one head; Gemma 2/3 add `pre_feedforward_layernorm` and
    `post_feedforward_layernorm` (their `post_attention_layernorm` normalises the
    attention output rather than the MLP input). A mixture of experts (Qwen3-MoE,
    Mixtral) holds a router and every expert's gate/up/down in place of the MLP."""
    h, q, kv = config.hidden, config.heads * config.head_dim, config.kv_heads * config.head_dim
    inter = config.intermediate
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
        if config.sandwich_norms:
            out[p + "pre_feedforward_layernorm.weight"] = (h,)
            out[p + "post_feedforward_layernorm.weight"] = (h,)
        if config.fused_projections:
            out[p + "self_attn.qkv_proj.weight"] = (q + 2 * kv, h)
        else:
            out[p + "self_attn.q_proj.weight"] = (q, h)
            out[p + "self_attn.k_proj.weight"] = (kv, h)
            out[p + "self_attn.v_proj.weight"] = (kv, h)
        out[p + "self_attn.o_proj.weight"] = (h, q)
        if config.qk_norm:
            out[p + "self_attn.q_norm.weight"] = (config.head_dim,)
            out[p + "self_attn.k_norm.weight"] = (config.head_dim,)
        if config.qkv_bias:
            out[p + "self_attn.q_proj.bias"] = (q,)
            out[p + "self_attn.k_proj.bias"] = (kv,)
            out[p + "self_attn.v_proj.bias"] = (kv,)
        if config.o_bias:
            out[p + "self_attn.o_proj.bias"] = (h,)
        if config.experts:  # a router and each expert's matrices, in place of the MLP
            out[config.router_tensor(i)] = (config.experts, h)
            width = config.expert_intermediate
            for e in range(config.experts):
                gate, up, down = config.expert_tensors(i, e)
                out[gate] = out[up] = (width, h)
                out[down] = (h, width)
            continue
        if config.fused_projections:
            out[p + "mlp.gate_up_proj.weight"] = (2 * inter, h)
        else:
            out[p + "mlp.gate_proj.weight"] = (inter, h)
            out[p + "mlp.up_proj.weight"] = (inter, h)
        out[p + "mlp.down_proj.weight"] = (h, inter)
    return out


def _plain_name(name: object) -> bool:
    """A bare file name: no directory part, not `.`/`..`, not absolute (any OS)."""
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name
            and "\\" not in name and "\0" not in name and Path(name).name == name)


def _read_header(path: Path) -> dict[str, TensorInfo]:
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
    return infos


class Checkpoint:
    """A validated checkpoint directory: config plus the location of every tensor."""

    def __init__(self, directory: str | Path, hashes: FileHashes | None = None) -> None:
        """`hashes`: where file sha256s are remembered (default: the user's cache)."""
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise CheckpointError(f"{self.directory} is not a directory")
        self.config = LlmConfig.from_checkpoint(self.directory)
        self.tensors: dict[str, TensorInfo] = {}
        weights = self._weight_files()
        for path in weights:
            self.tensors.update(_read_header(path))
        index = self.directory / INDEX_NAME
        # every file read by anyone holding this checkpoint: what the digest covers and
        # what an agent that cannot see the directory is sent
        self.files: tuple[Path, ...] = (
            self.directory / "config.json", *([index] if index.is_file() else []), *weights)
        self._hashes = hashes
        self._validate()
        self._maps: dict[Path, np.memmap[tuple[int], np.dtype[np.uint8]]] = {}

    @functools.cached_property
    def digest(self) -> str:
        """`content_digest` of every file in `files` (hashed once, then by file identity)."""
        hashes = self._hashes or FileHashes.at()
        return content_digest((path.name, hashes.sha256(path)) for path in self.files)

    def _weight_files(self) -> list[Path]:
        index = self.directory / INDEX_NAME
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
                raise CheckpointError(f"{index} is not a valid shard index: {exc}") from exc
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{index}: weight_map is not an object")
            for tensor, name in weight_map.items():
                if not _plain_name(name):
                    raise CheckpointError(
                        f"{index}: weight_map entry {tensor!r} names {name!r}, not a plain file "
                        "name inside the checkpoint directory; refused")
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


__all__ = ["INDEX_NAME", "Checkpoint", "FileHashes", "TensorInfo", "content_digest",
           "default_hash_cache", "expected_tensors"]
