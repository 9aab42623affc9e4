"""The checkpoint digest covers every byte, is cached by file identity, and converted
slices carry digests of their own (issue 9, finding 4)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.errors import CheckpointError
from edge_runtime.llm import RelativeSpeed
from edge_runtime.llm.checkpoint import INDEX_NAME, Checkpoint, FileHashes, content_digest
from edge_runtime.llm.slices import convert_share, share_key
from partitioner.plan import sha256_file
from partitioner.tensor import plan_tensor_parallel


def poison(directory: Path, tensor: str = "model.norm.weight") -> None:
    """Change one fp32 tensor's values in place: same header, same file size."""
    info = Checkpoint(directory, FileHashes(directory / "unused.json")).tensors[tensor]
    with info.file.open("r+b") as handle:
        handle.seek(info.start)
        values = np.frombuffer(handle.read(info.end - info.start), dtype="<f4")
        handle.seek(info.start)
        handle.write((values * -1.5 + 0.25).astype("<f4").tobytes())


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_digest_covers_tensor_bytes_not_only_headers(
    checkpoint: Callable[[str], Path], tmp_path: Path,
) -> None:
    honest = copy(checkpoint("llama"), tmp_path / "honest")
    poisoned = copy(checkpoint("llama"), tmp_path / "poisoned")
    poison(poisoned)
    hashes = FileHashes(tmp_path / "hashes.json")
    a, b = Checkpoint(honest, hashes), Checkpoint(poisoned, hashes)
    # what the old digest covered is identical: config, every header, every size
    for fa, fb in zip(a.files, b.files, strict=True):
        assert fa.stat().st_size == fb.stat().st_size
        head = 8 + int.from_bytes(fa.read_bytes()[:8], "little")
        assert fa.read_bytes()[:head] == fb.read_bytes()[:head]
    assert a.digest != b.digest
    assert a.digest == content_digest((p.name, sha256_file(p)) for p in a.files)


def test_file_hashes_are_reused_by_identity_and_redone_after_a_change(tmp_path: Path) -> None:
    data = tmp_path / "w.bin"
    data.write_bytes(b"a" * 4096)
    cache = tmp_path / "hashes.json"
    hashes = FileHashes(cache)
    assert hashes.sha256(data) == sha256_file(data)
    # plant a different hash for the same identity: a fresh reader believes the cache,
    # which proves an unchanged file is not read again
    doc = json.loads(cache.read_text())
    ((key, entry),) = doc.items()
    cache.write_text(json.dumps({key: [*entry[:3], "f" * 64]}))
    assert FileHashes(cache).sha256(data) == "f" * 64
    data.write_bytes(b"b" * 4096)  # same size, new bytes: mtime (or inode) changes
    os.utime(data, ns=(entry[1] + 10**9, entry[1] + 10**9))
    assert FileHashes(cache).sha256(data) == sha256_file(data)


@pytest.mark.parametrize("garbage", [b"{not json", b"[1, 2]", b'{"x": 3}', b"\xff\xfe"])
def test_corrupt_hash_cache_is_ignored(tmp_path: Path, garbage: bytes) -> None:
    data = tmp_path / "w.bin"
    data.write_bytes(b"weights")
    cache = tmp_path / "hashes.json"
    cache.write_bytes(garbage)
    assert FileHashes(cache).sha256(data) == sha256_file(data)
    assert FileHashes(cache).sha256(data) == sha256_file(data)  # and it was rewritten


@pytest.mark.parametrize("entry", ["../../etc/passwd", "/etc/passwd", "sub/model.safetensors",
                                   "..", "", 7])
def test_index_entries_must_be_plain_names(
    checkpoint: Callable[[str], Path], tmp_path: Path, entry: object,
) -> None:
    ckpt = copy(checkpoint("llama_sharded"), tmp_path / "ckpt")
    index = json.loads((ckpt / INDEX_NAME).read_text())
    index["weight_map"]["model.norm.weight"] = entry
    (ckpt / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="plain file name") as info:
        Checkpoint(ckpt)
    assert f"'model.norm.weight' names {entry!r}" in str(info.value)


def test_a_tampered_slice_is_detected_deleted_and_converted_again(
    checkpoint: Callable[[str], Path], tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    ckpt = Checkpoint(checkpoint("llama"))
    share = plan_tensor_parallel(ckpt.config.decoder_shape(32), [RelativeSpeed("d", 1.0)]).shares[0]
    first = convert_share(ckpt, share, tmp_path)
    assert first.directory.name == share_key(ckpt.digest, share)
    block = first.blocks[0].path
    honest = block.read_bytes()
    tampered = bytearray(honest)
    tampered[-8:] = bytes(b ^ 0xFF for b in tampered[-8:])
    block.write_bytes(bytes(tampered))  # same size: the old size check passed this
    with caplog.at_level(logging.WARNING, logger="edge_runtime.llm.slices"):
        again = convert_share(ckpt, share, tmp_path)
    assert "changed after conversion" in caplog.text
    assert again.blocks[0].path.read_bytes() == honest
    manifest = json.loads((again.directory / "manifest.json").read_text())
    assert all(b["sha256"] == sha256_file(again.directory / b["file"])
               for b in manifest["blocks"])
