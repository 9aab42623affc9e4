"""int8 block files for a quantized share that streams: a quarter of the fp32 bytes.

Why int8 and not the 4-bit codes: onnxruntime's `MatMulNBits` is fast only with its
weights prepacked at session creation. Measured on the development machine (one core,
2048 x 11264, one row): prepacked 1.3 ms; the same weights as an in-memory external
initializer with prepacking disabled 127 ms (and onnxruntime copied them, so a buffer
refilled in place is not even seen); as a graph input 155 ms. A streamed block would
need new sessions per token or a 100x slower kernel. `MatMulInteger` takes int8
weights as a graph input at 2.5 ms (MLAS packs them per call), so a session built once
per matrix shape runs over whatever block the window just read: no rebuilding, no
in-place tricks. int8 moves 1 byte per weight (4-bit: 0.56, fp32: 4), and is the more
accurate of the two.

Layout: one file per fp32 block, arrays 64-byte aligned; a matrix `name` (2-D, used as
x @ W) becomes `name` (int8 codes [K, N], per-column symmetric) and `name.scale` (fp32
[N]); vectors stay fp32. Converted block by block (peak: one fp32 block and its codes),
next to the fp32 slices, with a manifest naming each source block's sha256.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from edge_runtime.errors import CheckpointError
from edge_runtime.llm.quant import int8_columns
from edge_runtime.llm.slices import ArraySpec, BlockSpec, block_arrays
from edge_runtime.llm.window import read_block

log = logging.getLogger(__name__)

_ALIGN = 64
VERSION = 1
SCALE = ".scale"


def quantize_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column symmetric int8 codes [K, N] and fp32 scales [N] of `w` [K, N] (the
    codes `Int8MatMul` and `Int8Streamed` multiply by)."""
    return int8_columns(np.asarray(w, dtype=np.float32))


def _quantizes(name: str, arr: np.ndarray) -> bool:
    return arr.ndim == 2 and name != "embedding"


def _write(path: Path, arrays: dict[str, np.ndarray]) -> dict[str, list[object]]:
    specs: dict[str, list[object]] = {}
    offset = 0
    with path.open("wb") as out:
        for name, arr in arrays.items():
            pad = (-offset) % _ALIGN
            out.write(b"\0" * pad)
            offset += pad
            out.write(np.ascontiguousarray(arr).tobytes())
            specs[name] = [offset, list(arr.shape)]
            offset += arr.nbytes
    return specs


def _source_digests(slices_dir: Path) -> dict[str, str]:
    try:
        doc = json.loads((slices_dir / "manifest.json").read_text())
        return {str(b["name"]): str(b["sha256"]) for b in doc["blocks"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def convert_int8(blocks: tuple[BlockSpec, ...], slices_dir: Path) -> tuple[BlockSpec, ...]:
    """int8 twins of the fp32 `blocks` of the slice directory `slices_dir`, written to
    its `int8/` folder (reused while its manifest names the same source sha256s)."""
    directory = slices_dir / "int8"
    digests = _source_digests(slices_dir)
    directory.mkdir(parents=True, exist_ok=True)
    manifest = directory / "manifest.json"
    wanted = {b.name: digests.get(b.name, "") for b in blocks}
    if manifest.is_file():
        try:
            doc = json.loads(manifest.read_text())
            if doc.get("version") == VERSION and doc.get("sources") == wanted:
                return tuple(_spec(directory, b) for b in doc["blocks"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("int8 slices in %s unreadable (%s); converting again", directory, exc)
    out = []
    for block in blocks:
        arrays: dict[str, np.ndarray] = {}
        for name, arr in block_arrays(block, read_block(block.path, block.nbytes)).items():
            if _quantizes(name, arr):
                arrays[name], arrays[name + SCALE] = quantize_int8(arr)
            else:
                arrays[name] = arr
        path = directory / f"{block.name}.i8"
        specs = _write(path, arrays)
        del arrays
        out.append({"name": block.name, "file": path.name, "nbytes": path.stat().st_size,
                    "arrays": specs})
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text(json.dumps({"version": VERSION, "sources": wanted, "blocks": out}))
    os.replace(tmp, manifest)
    return tuple(_spec(directory, b) for b in out)


def _spec(directory: Path, doc: dict[str, object]) -> BlockSpec:
    path = directory / str(doc["file"])
    nbytes = int(str(doc["nbytes"]))
    if not path.is_file() or path.stat().st_size != nbytes:
        raise CheckpointError(f"{path} is missing or truncated; delete {directory} to redo")
    arrays = doc["arrays"]
    assert isinstance(arrays, dict)
    specs = {k: ArraySpec(int(o), tuple(s)) for k, (o, s) in arrays.items()}
    return BlockSpec(str(doc["name"]), path, nbytes, specs)


def int8_views(block: BlockSpec, buffer: np.ndarray) -> dict[str, np.ndarray]:
    """Views of an int8 block's arrays into its buffer: codes as int8, the rest fp32."""
    out: dict[str, np.ndarray] = {}
    for name, spec in block.arrays.items():
        size = int(np.prod(spec.shape))
        if name + SCALE in block.arrays:
            out[name] = buffer[spec.offset:spec.offset + size].view(np.int8).reshape(spec.shape)
        else:
            raw = buffer[spec.offset:spec.offset + 4 * size]
            out[name] = raw.view(np.float32).reshape(spec.shape)
    return out


__all__ = ["SCALE", "convert_int8", "int8_views", "quantize_int8"]
