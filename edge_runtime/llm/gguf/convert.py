"""A GGUF file → an ordinary checkpoint directory, content-addressed in the user's cache.

Why convert instead of teaching the engine a second format: everything downstream of
a checkpoint directory — validation, `Checkpoint.digest`, sending files to agents that
cannot read the path, per-device slicing, the sliding window, `quantize="q4"` — then
works unchanged and is already tested. The engine computes in fp32, so a quantized
GGUF is dequantized once, here, the way llama.cpp and transformers dequantize it (F16
and BF16 are kept as they are); the cost is disk (fp32 weights, ~7x a Q4_K_M file)
once per file, not per deploy.

The directory is `<cache>/gguf/<sha256 of the .gguf>-v<CONVERTER_VERSION>/<file stem>/`
(its name is the one `serve` and `describe()` show) holding
config.json, model.safetensors, tokenizer.json, tokenizer_config.json (with the chat
template) and gguf.json (what it came from). The key is the file's content, so a
renamed or re-downloaded copy reuses it and a changed file is converted anew; the
sha256 is remembered by file identity (`FileHashes`), so a second deploy does not
re-read gigabytes. A conversion is written under a temporary name and renamed into
place, so a crash leaves no half checkpoint and two processes converting the same file
both end with one complete copy.

With `quantize="q4"` the engine re-quantizes these fp32 values to its own 4-bit blocks.
GGUF's Q4_0 is the same scheme and could be re-packed losslessly (`repack.py`, exact in
tests) once the 4-bit kernel accepts pre-packed codes; re-quantizing costs at most half
an engine step per weight, and measured no more on the logits than 4-bit from fp32.

Before a byte of weights is converted, the architecture, every config field the engine
would refuse (through `LlmConfig.from_dict`, the same check as for safetensors), every
tensor type, name and shape are checked: an unsupported file fails in seconds
with a `CheckpointError` naming the key or type, before any agent loads anything.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devices.cache import ENV_CACHE_DIR
from edge_runtime.errors import CheckpointError
from edge_runtime.llm.checkpoint import FileHashes, expected_tensors
from edge_runtime.llm.config import LlmConfig
from edge_runtime.llm.gguf.config_map import hf_config
from edge_runtime.llm.gguf.reader import GGUF_SUFFIX, GgufFile, is_gguf
from edge_runtime.llm.gguf.tensors import TensorJob, chunks, plan_tensors
from edge_runtime.llm.gguf.tokenizer import build_tokenizer, tokenizer_config

log = logging.getLogger(__name__)

# Bumped when the converted output would differ (a fix in a mapping): old copies are
# then ignored rather than trusted.
CONVERTER_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
SOURCE_NAME = "gguf.json"
Progress = Callable[[int, int], None]


def default_gguf_cache() -> Path:
    """$EDGE_RUNTIME_CACHE_DIR/gguf, else ~/.cache/edge-runtime/gguf."""
    base = os.environ.get(ENV_CACHE_DIR)
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "edge-runtime"
    return root / "gguf"


def resolve_checkpoint(path: str | Path, cache_dir: Path | None = None,
                       progress: Progress | None = None) -> Path:
    """The checkpoint directory for `path`: itself for a directory, the converted (and
    cached) directory for a .gguf file. Other paths are returned unchanged, so the
    caller's own error names them. `progress`: see `convert_gguf`."""
    p = Path(path).expanduser()
    if is_gguf(p) or (p.suffix.lower() == GGUF_SUFFIX and not p.exists()):
        return convert_gguf(p, cache_dir, progress)  # a missing .gguf: named as such
    return p


def stderr_progress(written: int, total: int) -> None:
    """A `progress` for commands: one updating line on stderr while weights convert."""
    end = "\n" if written >= total else ""
    print(f"\rconverting the GGUF weights: {written / 1e6:.0f} / {total / 1e6:.0f} MB",
          end=end, file=sys.stderr, flush=True)


def resolve_config(path: str | Path, cache_dir: Path | None = None) -> Path:
    """For planning (`plan --llm`), which reads a config and no weights: a .gguf becomes
    `<cache>/gguf/configs/<stem>.json`, its metadata's HF config (validated, written
    afresh each time: it costs milliseconds and cannot go stale); other paths stay."""
    p = Path(path).expanduser()
    if not is_gguf(p):
        return p
    gguf = GgufFile(p)
    config = hf_config(gguf)
    LlmConfig.from_dict(config, source=f"{p} (GGUF metadata)")
    out = (cache_dir or default_gguf_cache()) / "configs" / f"{p.stem or 'model'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}")
    tmp.write_text(json.dumps(config, indent=2))
    os.replace(tmp, out)
    return out


def _existing(key_dir: Path) -> Path | None:
    if not key_dir.is_dir():
        return None
    for child in sorted(key_dir.iterdir()):
        if not child.name.startswith(".") and (child / SOURCE_NAME).is_file():
            return child
    return None


def convert_gguf(path: str | Path, cache_dir: Path | None = None,
                 progress: Progress | None = None) -> Path:
    """Convert the .gguf at `path` (once per content) and return the checkpoint directory.

    `progress(bytes_written, total)` is called as weights are written."""
    source = Path(path).expanduser().resolve()
    if not source.is_file():
        raise CheckpointError(f"no GGUF file at {source}")
    digest = FileHashes.at().sha256(source)
    key_dir = (cache_dir or default_gguf_cache()) / f"{digest}-v{CONVERTER_VERSION}"
    found = _existing(key_dir)
    if found is not None:
        return found
    gguf = GgufFile(source)
    config = hf_config(gguf)
    # everything is refused before a byte is converted: config, types, names, shapes
    jobs = plan_tensors(gguf, config)
    _check_tensors(source, LlmConfig.from_dict(config, source=f"{source} (GGUF metadata)"),
                   jobs)
    tokenizer = build_tokenizer(gguf) if "tokenizer.ggml.model" in gguf.metadata else None
    try:
        return _write(source, gguf, digest, key_dir, config, jobs, tokenizer, progress)
    except OSError as exc:
        need = sum(job.nbytes for job in jobs)
        raise CheckpointError(
            f"cannot write the converted {source.name} ({need / 1e9:.1f} GB of fp32/fp16 "
            f"weights) under {key_dir.parent}: {exc}; free space there or point "
            f"{ENV_CACHE_DIR} at a larger disk") from exc


def _check_tensors(source: Path, config: LlmConfig, jobs: list[TensorJob]) -> None:
    """The converted tensors against what `Checkpoint` will expect of this config."""
    expected = expected_tensors(config)
    have = {job.hf_name: (job.shape, job.source.name) for job in jobs}
    problems = [f"missing {name}" for name in expected if name not in have]
    problems += [f"{gguf_name} has shape {list(shape)}, the metadata says {list(expected[n])}"
                 for n, (shape, gguf_name) in have.items() if n in expected
                 and tuple(shape) != tuple(expected[n])]
    problems += [f"unexpected {gguf_name}" for n, (_, gguf_name) in have.items()
                 if n not in expected and not (n == "lm_head.weight"
                                               and config.tie_word_embeddings)]
    if problems:
        raise CheckpointError(f"{source}: tensors do not match the GGUF metadata "
                              f"({'; '.join(problems[:5])}); the file is damaged or "
                              "not a model this engine runs")


def _write(source: Path, gguf: GgufFile, digest: str, key_dir: Path, config: dict[str, Any],
           jobs: list[TensorJob], tokenizer: Any, progress: Progress | None) -> Path:
    key_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".converting-", dir=key_dir))
    try:
        target = tmp / (source.stem or "model")
        target.mkdir()
        (target / "config.json").write_text(json.dumps(config, indent=2))
        if tokenizer is not None:
            tokenizer.save(str(target / "tokenizer.json"))
            (target / "tokenizer_config.json").write_text(
                json.dumps(tokenizer_config(gguf), indent=2, ensure_ascii=False))
        log.info("converting %s (%s) to %s", source.name, gguf.architecture, key_dir)
        write_safetensors(target / WEIGHTS_NAME, jobs, progress)
        (target / SOURCE_NAME).write_text(json.dumps(_describe(gguf, digest), indent=2))
        final = key_dir / target.name
        try:
            target.rename(final)
        except OSError:  # another process finished the same file first
            found = _existing(key_dir)
            if found is None:
                raise
            return found
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _describe(gguf: GgufFile, digest: str) -> dict[str, Any]:
    types: dict[str, int] = {}
    for tensor in gguf.tensors.values():
        types[tensor.type_name] = types.get(tensor.type_name, 0) + 1
    return {"source": str(gguf.path), "sha256": digest, "architecture": gguf.architecture,
            "name": gguf.metadata.get("general.name"), "tensor_types": types,
            "converter_version": CONVERTER_VERSION}


def write_safetensors(path: Path, jobs: list[TensorJob], progress: Progress | None = None
                      ) -> None:
    """Write `jobs` as one safetensors file, streaming each tensor's bytes.

    The header is known before any data (names, dtypes, shapes), so tensors are written
    chunk by chunk and the working set stays one chunk, whatever the model size."""
    header: dict[str, Any] = {}
    offset = 0
    for job in jobs:
        header[job.hf_name] = {"dtype": job.dtype, "shape": list(job.shape),
                               "data_offsets": [offset, offset + job.nbytes]}
        offset += job.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned
    total, written = offset, 0
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for job in jobs:
            size = 0
            for block in chunks(job):
                f.write(block)
                size += len(block)
                written += len(block)
                if progress is not None:
                    progress(written, total)
            if size != job.nbytes:
                raise CheckpointError(f"{job.source.name}: wrote {size} bytes for "
                                      f"{job.hf_name}, expected {job.nbytes}")


__all__ = ["CONVERTER_VERSION", "convert_gguf", "default_gguf_cache", "resolve_checkpoint",
           "resolve_config", "stderr_progress", "write_safetensors"]
