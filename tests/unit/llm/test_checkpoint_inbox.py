"""What an agent accepts into its cache: checkpoint sets that match their digest, paths
its configuration allows, and incomplete uploads within a quota that expire (issue 9)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from edge_runtime.agent.cache import ShardCache, UploadQuota
from edge_runtime.agent.config import PARTIAL_UPLOAD_TTL_S
from edge_runtime.agent.llm_files import CheckpointInbox, allowed_checkpoint
from edge_runtime.errors import ShardIntegrityError, UploadQuotaError
from edge_runtime.llm.checkpoint import content_digest

FILES = {"config.json": b'{"a": 1}', "model.safetensors": b"w" * 3000}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def send(inbox: CheckpointInbox, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        for offset in range(0, len(data), 1024):
            inbox.put(name, offset, data[offset:offset + 1024], sha(data))


def test_a_set_matching_its_digest_is_published(tmp_path: Path) -> None:
    digest = content_digest((n, sha(d)) for n, d in FILES.items())
    root = tmp_path / "checkpoints"  # made on first use
    inbox = CheckpointInbox(root, digest, [(n, len(d)) for n, d in FILES.items()])
    assert inbox.missing() == list(FILES)
    send(inbox, FILES)
    assert inbox.complete and inbox.missing() == []
    assert (root / digest / "model.safetensors").read_bytes() == FILES["model.safetensors"]


def test_files_that_are_not_the_announced_checkpoint_are_refused_and_deleted(
    tmp_path: Path,
) -> None:
    honest = content_digest((n, sha(d)) for n, d in FILES.items())
    other = {**FILES, "model.safetensors": b"x" * 3000}  # same names and sizes
    inbox = CheckpointInbox(tmp_path, honest, [(n, len(d)) for n, d in other.items()])
    with pytest.raises(ShardIntegrityError, match="announced checkpoint digest"):
        send(inbox, other)  # every file matches the sha256 sent with it; the set does not
    assert not inbox.complete
    assert inbox.missing() == list(FILES)  # nothing kept: an honest deploy sends all again
    assert not any(tmp_path.rglob("model.safetensors"))
    send(CheckpointInbox(tmp_path, honest, [(n, len(d)) for n, d in FILES.items()]), FILES)
    assert (tmp_path / honest / "model.safetensors").read_bytes() == FILES["model.safetensors"]


def test_only_allowed_directories_are_read_in_place(tmp_path: Path) -> None:
    allowed = tmp_path / "models"
    (allowed / "tiny").mkdir(parents=True)
    outside = tmp_path / "secret"
    outside.mkdir()
    (allowed / "link").symlink_to(outside)
    roots = (allowed,)
    assert allowed_checkpoint(str(allowed / "tiny"), roots) == (allowed / "tiny").resolve()
    assert allowed_checkpoint("/etc", roots) is None
    assert allowed_checkpoint("/etc", ()) is None
    assert allowed_checkpoint(str(outside), roots) is None
    assert allowed_checkpoint(str(allowed / "link"), roots) is None  # symlink followed
    assert allowed_checkpoint(str(allowed / "tiny" / ".." / "tiny"), roots) is None
    assert allowed_checkpoint("models/tiny", roots) is None  # relative: refused
    assert allowed_checkpoint("", roots) is None


def test_an_upload_over_the_quota_is_refused_and_nothing_kept(tmp_path: Path) -> None:
    cache = ShardCache(tmp_path, UploadQuota(limit_bytes=10_000))
    with pytest.raises(UploadQuotaError, match="exceeds"):
        cache.put_chunk("a" * 64, ".onnx", 0, 10_001, b"x" * 100)
    assert list(cache.partial.iterdir()) == []
    for offset in range(0, 8_000, 1_000):  # 8,000 of 9,000 bytes held
        assert not cache.put_chunk("b" * 64, ".onnx", offset, 9_000, b"x" * 1_000)
    with pytest.raises(UploadQuotaError, match="already holds"):
        cache.put_chunk("c" * 64, ".onnx", 0, 3_000, b"x" * 100)
    with pytest.raises(UploadQuotaError, match="exceeds"):  # checkpoints share the quota
        CheckpointInbox(tmp_path / "llm", "d" * 64, [("model.safetensors", 20_000)], cache)
    assert [p.name for p in cache.partial.iterdir()] == [f"{'b' * 64}.onnx.part"]


def test_idle_partial_uploads_expire(tmp_path: Path) -> None:
    cache = ShardCache(tmp_path)
    assert not cache.put_chunk("a" * 64, ".onnx", 0, 1000, b"x" * 10)
    inbox = CheckpointInbox(tmp_path / "llm", "b" * 64, [("config.json", 1000)], cache)
    assert not inbox.put("config.json", 0, b"{" * 10, "0" * 64)
    stale = time.time() - PARTIAL_UPLOAD_TTL_S - 1
    for path in cache.partial.rglob("*"):
        os.utime(path, (stale, stale))
    assert not cache.put_chunk("c" * 64, ".onnx", 0, 1000, b"x" * 10)  # a new upload sweeps
    assert [p.name for p in cache.partial.iterdir()] == [f"{'c' * 64}.onnx.part"]
    for path in cache.partial.iterdir():
        os.utime(path, (stale, stale))
    ShardCache(tmp_path)  # an agent starting on this cache sweeps what a previous run left
    assert list(cache.partial.iterdir()) == []
