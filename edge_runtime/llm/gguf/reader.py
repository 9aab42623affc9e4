"""Opening a GGUF file: its metadata as plain Python values and its tensors by name.

Why a wrapper around `gguf.GGUFReader`: the reader memory-maps the file (tensors are
read only when converted) but speaks in numpy parts and raises bare `ValueError`s on a
bad file; everything past this module wants `metadata["llama.block_count"] == 16` and a
`CheckpointError` that names the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.errors import CheckpointError

GGUF_SUFFIX = ".gguf"
_MAGIC = b"GGUF"


def is_gguf(path: str | Path) -> bool:
    """True for an existing file that starts with the GGUF magic (or is named *.gguf)."""
    p = Path(path)
    if not p.is_file():
        return False
    if p.suffix.lower() == GGUF_SUFFIX:
        return True
    try:
        with p.open("rb") as f:
            return f.read(4) == _MAGIC
    except OSError:
        return False


@dataclass(frozen=True)
class GgufTensor:
    """One stored tensor: its GGUF name, ggml type name, logical shape (rows first) and
    raw data (a memory-mapped view: bytes per row for block types, values otherwise)."""

    name: str
    type_name: str
    type_id: int
    shape: tuple[int, ...]
    data: np.ndarray


class GgufFile:
    """A parsed GGUF file: `metadata` (key → int/float/bool/str/list) and `tensors`."""

    def __init__(self, path: str | Path) -> None:
        from gguf import GGUFReader

        self.path = Path(path)
        try:
            reader = GGUFReader(self.path, "r")
        except (OSError, ValueError, KeyError, IndexError) as exc:
            raise CheckpointError(f"{self.path} is not a readable GGUF file: {exc}") from exc
        self.metadata: dict[str, Any] = {}
        for key, field in reader.fields.items():
            if key.startswith("GGUF."):
                continue  # version, counts: the reader's own bookkeeping
            try:
                self.metadata[key] = field.contents()
            except (UnicodeDecodeError, ValueError, IndexError) as exc:
                raise CheckpointError(f"{self.path}: metadata {key} is unreadable: {exc}") from exc
        self.tensors: dict[str, GgufTensor] = {}
        for t in reader.tensors:
            shape = tuple(int(d) for d in reversed(t.shape.tolist()))
            self.tensors[t.name] = GgufTensor(t.name, t.tensor_type.name, int(t.tensor_type),
                                              shape, t.data)

    @property
    def architecture(self) -> str:
        arch = self.metadata.get("general.architecture")
        if not isinstance(arch, str):
            raise CheckpointError(f"{self.path}: no general.architecture in the metadata")
        return arch

    def arch_value(self, key: str, default: Any = None) -> Any:
        """`<architecture>.<key>` from the metadata (e.g. `block_count`)."""
        return self.metadata.get(f"{self.architecture}.{key}", default)

    def need(self, key: str) -> Any:
        """`<architecture>.<key>`, or a `CheckpointError` naming it when absent."""
        value = self.arch_value(key)
        if value is None:
            raise CheckpointError(f"{self.path}: metadata {self.architecture}.{key} is missing")
        return value


__all__ = ["GGUF_SUFFIX", "GgufFile", "GgufTensor", "is_gguf"]
