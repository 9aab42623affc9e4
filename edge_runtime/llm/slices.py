"""Convert a checkpoint once into one device's per-block slice files in a cache directory.

Why per-block files: the sliding window (`window.LayerWindow`) streams whole blocks —
attention of layer i, MLP of layer i, then the LM head's vocabulary rows in chunks no
larger than a layer block — so each block is one file read
sequentially in one pass (`window.read_block`). Weights are stored fp32, transposed to
[in, out] so a decode step `x @ W` streams each matrix contiguously, with q/k/v fused
into one matrix and gate/up into another (one BLAS call each) — checkpoints that store
them fused (Phi-3) are cut by head group and column like the others. Norm weights are
stored as the factor the kernel multiplies by (Gemma's 1 + w added once, here). A
mixture of experts' MLP block holds the whole router, flat (`router`: [hidden, experts]
read as one vector, so no weight format ever rounds it — a flipped top-k choice would
change which experts run), and for each expert of the share its gate/up and down
matrices (`expert{e}.wgu_t`, `expert{e}.wdown_t`: each becomes a kernel of its own). The
embedding table is one fp32 file read by memory map, row by row, so it is never
resident as a whole.

Layout of a block file: arrays back to back, each at a 64-byte aligned offset; the
`manifest.json` next to them names every array's offset and shape and the sha256 of
every file (hashed as it is written). The manifest is written last (atomic rename), so
an interrupted conversion is simply redone. A reused share is re-hashed before use: a
file changed on disk (same size or not) makes `convert_share` delete the share and
convert it again from the checkpoint, whose own digest covers every byte of it. The
directory's name is derived from that content digest, so two checkpoints that differ
in any byte never share a conversion.

A pipeline stage's share (`TensorShare.layers`) converts and keeps only its layers'
blocks, the embedding table only if its range starts at the first layer (token ids
come in there; a later stage takes hidden states) and the final norm and LM head only
if it ends at the last layer: its key and manifest name the range, and a manifest
without an embedding says so (`"embedding": null`). A tied LM head is cut from the
checkpoint's embedding into the last stage's head chunks, so that stage needs no
embedding file either. Its `SliceSet.blocks` stays indexed by layer (block 2i is layer i's
attention, 2i+1 its MLP, the head's chunks after the last layer) so a stage's blocks are
found where a whole share's are; the positions of layers it does not hold are empty
(`BlockSpec.held` false, no file, 0 bytes) and never read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.errors import CheckpointError
from edge_runtime.llm.checkpoint import Checkpoint
from edge_runtime.llm.share_arrays import head_chunks, layer_arrays
from partitioner.plan import sha256_file
from partitioner.tensor import TensorShare

log = logging.getLogger(__name__)

_ALIGN = 64
MANIFEST_VERSION = 3  # 3: every file's sha256 is recorded and checked


@dataclass(frozen=True)
class ArraySpec:
    """One array inside a block file."""

    offset: int
    shape: tuple[int, ...]


@dataclass(frozen=True)
class BlockSpec:
    """One block: its name, file, size in bytes and the arrays it holds."""

    name: str
    path: Path
    nbytes: int
    arrays: dict[str, ArraySpec]

    @property
    def held(self) -> bool:
        """False for a layer another pipeline stage holds (no file here)."""
        return bool(self.arrays)


@dataclass(frozen=True)
class SliceSet:
    """A converted share: its blocks in order of use and the embedding file (None for a
    pipeline stage after the first, which never embeds token ids)."""

    directory: Path
    blocks: tuple[BlockSpec, ...]
    embedding: Path | None
    vocab: int
    hidden: int

    def embedding_table(self) -> np.ndarray:
        """The whole embedding as a read-only memory map (rows are paged in on use); an
        empty [0, hidden] table for a later stage, so a lookup there fails."""
        if self.embedding is None:
            return np.zeros((0, self.hidden), dtype=np.float32)
        return np.memmap(
            self.embedding, dtype=np.float32, mode="r", shape=(self.vocab, self.hidden)
        )


def holds_embedding(share: TensorShare) -> bool:
    """Whether the share embeds token ids: a whole share, or the first pipeline stage."""
    return share.layers is None or share.layers[0] == 0


def share_key(checkpoint_digest: str, share: TensorShare) -> str:
    """Cache key of a share: the checkpoint's content digest, the three ranges and a
    pipeline stage's layer range (a whole share's key is unchanged by it)."""
    parts: list[object] = [checkpoint_digest, share.kv_heads, share.mlp_columns,
                           share.vocab_rows]
    if share.layers is not None:
        parts.append(list(share.layers))
    text = json.dumps(parts)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _share_doc(share: TensorShare) -> dict[str, Any]:
    """The share's ranges as its manifest records them."""
    return {"kv_heads": list(share.kv_heads), "mlp_columns": list(share.mlp_columns),
            "vocab_rows": list(share.vocab_rows),
            **({"experts": list(share.experts)} if share.experts != (0, 0) else {}),
            **({"layers": list(share.layers)} if share.layers is not None else {})}


class _HashingWriter:
    """A file written once, hashed as it is written (no second read)."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("wb")
        self._sha = hashlib.sha256()

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._sha.update(data)

    def close(self) -> str:
        """Close the file; its sha256."""
        self._file.close()
        return self._sha.hexdigest()


def _write_block(path: Path, arrays: dict[str, np.ndarray]) -> tuple[dict[str, ArraySpec], str]:
    """Write the arrays; their specs and the file's sha256."""
    specs: dict[str, ArraySpec] = {}
    offset = 0
    out = _HashingWriter(path)
    try:
        for name, arr in arrays.items():
            pad = (-offset) % _ALIGN
            out.write(b"\0" * pad)
            offset += pad
            data = np.ascontiguousarray(arr, dtype=np.float32)
            out.write(data.tobytes())
            specs[name] = ArraySpec(offset, tuple(data.shape))
            offset += data.nbytes
    finally:
        sha256 = out.close()
    return specs, sha256


def _write_embedding(ckpt: Checkpoint, directory: Path) -> tuple[Path, str]:
    """The embedding as one fp32 file, 4096 rows at a time; its path and sha256."""
    path = directory / "embedding.f32"
    table = ckpt.tensor("model.embed_tokens.weight")
    out = _HashingWriter(path)
    try:
        for r in range(0, ckpt.config.vocab, 4096):
            out.write(np.ascontiguousarray(table[r : r + 4096], dtype=np.float32).tobytes())
    finally:
        sha256 = out.close()
    return path, sha256


def convert_share(ckpt: Checkpoint, share: TensorShare, cache_dir: str | Path,
                  progress: Callable[[int, int], None] | None = None) -> SliceSet:
    """Write (or reuse) the slice files of `share`; returns the loaded manifest.

    `progress(done, total)`: told as a conversion starts and after each block written
    (2 per layer, the LM head, the embedding — counted whether or not a pipeline stage
    holds them), so a long conversion shows it moves; a reuse tells nothing."""
    directory = Path(cache_dir) / share_key(ckpt.digest, share)
    manifest = directory / "manifest.json"
    if manifest.is_file():
        try:
            return load_slices(directory, expect=(ckpt.digest, share))
        except CheckpointError as exc:
            log.warning("slices failed their check; deleting and converting them again "
                        "from the checkpoint: %s", exc)
            shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    c = ckpt.config
    log.info("converting %s share %s into %s", ckpt.directory, share.device, directory)
    blocks: list[dict[str, Any]] = []
    first, end = share.layer_range(c.layers)
    if not 0 <= first < end <= c.layers:
        raise CheckpointError(f"layer range {share.layers} is not within the checkpoint's "
                              f"{c.layers} layers: plan the stage for this checkpoint")
    steps = 2 * (end - first) + 2
    tell = progress or (lambda done, total: None)
    tell(0, steps)

    def add(name: str, arrays: dict[str, np.ndarray]) -> None:
        path = directory / f"{name}.bin"
        specs, sha256 = _write_block(path, arrays)
        blocks.append(
            {
                "name": name,
                "file": path.name,
                "nbytes": path.stat().st_size,
                "sha256": sha256,
                "arrays": {k: [s.offset, list(s.shape)] for k, s in specs.items()},
            }
        )

    for i in range(first, end):
        attn, mlp = layer_arrays(ckpt, share, i)
        add(f"layer{i}.attn", attn)
        add(f"layer{i}.mlp", mlp)
        tell(2 * (i - first) + 2, steps)
    if end == c.layers:  # only the last stage holds the final norm and LM head
        for j, chunk in enumerate(head_chunks(ckpt, share, max(b["nbytes"] for b in blocks))):
            add(f"head{j}", chunk)
    tell(steps - 1, steps)
    embedding = _write_embedding(ckpt, directory) if holds_embedding(share) else None
    doc = {
        "version": MANIFEST_VERSION,
        "checkpoint_digest": ckpt.digest,
        "share": _share_doc(share),
        "vocab": c.vocab,
        "hidden": c.hidden,
        "embedding": None if embedding is None else embedding[0].name,
        "embedding_sha256": None if embedding is None else embedding[1],
        "blocks": blocks,
    }
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, manifest)
    tell(steps, steps)
    return load_slices(directory, verify=False)  # hashed as written


def _check_file(path: Path, nbytes: int, sha256: object, verify: bool) -> None:
    if not path.is_file() or path.stat().st_size != nbytes:
        raise CheckpointError(f"{path} is missing or truncated")
    if verify:
        actual = sha256_file(path)
        if actual != sha256:
            raise CheckpointError(f"{path} hashes to {actual[:12]}…, its manifest says "
                                  f"{str(sha256)[:12]}…: it was changed after conversion")


def load_slices(directory: str | Path, *, verify: bool = True,
                expect: tuple[str, TensorShare] | None = None) -> SliceSet:
    """Read a slice directory's manifest and check every file: size, and (`verify`) the
    sha256 of its bytes. `expect`: the checkpoint digest and share the manifest must
    name. Any failure is a `CheckpointError` (`convert_share` then converts again)."""
    directory = Path(directory)
    try:
        doc = json.loads((directory / "manifest.json").read_text())
        if doc.get("version") != MANIFEST_VERSION:
            raise CheckpointError(f"{directory}: slice manifest version {doc.get('version')}")
        if expect is not None:
            digest, share = expect
            if doc["checkpoint_digest"] != digest or doc["share"] != _share_doc(share):
                raise CheckpointError(f"{directory}: manifest names another checkpoint or share")
        blocks = []
        for b in doc["blocks"]:
            path = directory / b["file"]
            _check_file(path, int(b["nbytes"]), b["sha256"], verify)
            arrays = {k: ArraySpec(int(o), tuple(s)) for k, (o, s) in b["arrays"].items()}
            blocks.append(BlockSpec(b["name"], path, int(b["nbytes"]), arrays))
        layers = doc["share"].get("layers")
        if layers is not None:  # a stage: its blocks at their layers' positions
            first, _ = (int(x) for x in layers)
            absent = [BlockSpec(f"layer{i // 2}.{'mlp' if i % 2 else 'attn'}",
                                directory / "absent", 0, {}) for i in range(2 * first)]
            blocks = absent + blocks
        vocab, hidden = int(doc["vocab"]), int(doc["hidden"])
        embedding = None
        if doc["embedding"] is not None:
            embedding = directory / doc["embedding"]
            _check_file(embedding, vocab * hidden * 4, doc["embedding_sha256"], verify)
        elif layers is None or int(layers[0]) == 0:
            raise CheckpointError(f"{directory}: the manifest names no embedding for a share "
                                  "that embeds token ids")
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(
            f"{directory}: unreadable slice manifest ({exc}); delete it to redo"
        ) from exc
    return SliceSet(directory, tuple(blocks), embedding, vocab, hidden)


def block_arrays(block: BlockSpec, buffer: np.ndarray) -> dict[str, np.ndarray]:
    """Views of a loaded block's arrays into its byte buffer (no copies)."""
    out = {}
    for name, spec in block.arrays.items():
        n = int(np.prod(spec.shape)) * 4
        out[name] = buffer[spec.offset : spec.offset + n].view(np.float32).reshape(spec.shape)
    return out


__all__ = [
    "ArraySpec",
    "BlockSpec",
    "SliceSet",
    "block_arrays",
    "convert_share",
    "holds_embedding",
    "load_slices",
    "share_key",
]
