"""What an agent accepts into its cache: checkpoint sets that match their digest, paths
its configuration allows, and incomplete uploads within a quota that expire (issue 9)."""

from __future__ import annotations

import hashlib
import os
import random
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

from edge_runtime.agent.cache import ShardCache, UploadQuota
from edge_runtime.agent.config import AgentTimeouts
from edge_runtime.agent.llm_files import CheckpointInbox, allowed_checkpoint
from edge_runtime.errors import DeployError, ShardIntegrityError, UploadQuotaError
from edge_runtime.llm.checkpoint import FileHashes, content_digest

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
    cache = ShardCache(tmp_path / "cache")
    inbox = CheckpointInbox(root, digest, [(n, len(d)) for n, d in FILES.items()], cache)
    assert inbox.missing() == list(FILES)
    send(inbox, FILES)
    assert inbox.complete and inbox.missing() == []
    assert (root / digest / "model.safetensors").read_bytes() == FILES["model.safetensors"]
    assert list(cache.partial.iterdir()) == []  # moved into place, nothing left in transit
    again = CheckpointInbox(root, digest, [(n, len(d)) for n, d in FILES.items()], cache)
    assert again.complete and again.missing() == []  # a redeploy receives nothing


def test_files_that_are_not_the_announced_checkpoint_are_refused_and_deleted(
    tmp_path: Path,
) -> None:
    honest = content_digest((n, sha(d)) for n, d in FILES.items())
    other = {**FILES, "model.safetensors": b"x" * 3000}  # same names and sizes
    cache = ShardCache(tmp_path / "cache")
    inbox = CheckpointInbox(tmp_path, honest, [(n, len(d)) for n, d in other.items()], cache)
    with pytest.raises(ShardIntegrityError, match="announced checkpoint digest"):
        send(inbox, other)  # every file matches the sha256 sent with it; the set does not
    assert not inbox.complete
    assert inbox.missing() == list(FILES)  # nothing kept: an honest deploy sends all again
    assert not any(tmp_path.rglob("model.safetensors"))
    send(CheckpointInbox(tmp_path, honest, [(n, len(d)) for n, d in FILES.items()], cache),
         FILES)
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
    stale = time.time() - AgentTimeouts.partial_upload_ttl_s - 1
    for path in cache.partial.rglob("*"):
        os.utime(path, (stale, stale))
    assert not cache.put_chunk("c" * 64, ".onnx", 0, 1000, b"x" * 10)  # a new upload sweeps
    assert [p.name for p in cache.partial.iterdir()] == [f"{'c' * 64}.onnx.part"]
    for path in cache.partial.iterdir():
        os.utime(path, (stale, stale))
    ShardCache(tmp_path)  # an agent starting on this cache sweeps what a previous run left
    assert list(cache.partial.iterdir()) == []


DIGEST = content_digest((n, sha(d)) for n, d in FILES.items())
# What a trusted but malicious coordinator sends for the same digest: other bytes under the
# same names, each with the sha256 of those bytes, at the honest sizes or at others.
SAME_SIZES = {**FILES, "model.safetensors": b"p" * 3000}
OTHER_SIZES = {"config.json": b'{"a": 22}', "model.safetensors": b"p" * 5000}


def assert_published_honestly(root: Path, hashes: FileHashes) -> None:
    """The published set is the honest one, and every remembered hash is its file's own."""
    directory = root / DIGEST
    assert sorted(p.name for p in directory.iterdir()) == sorted(FILES)
    for name, data in FILES.items():
        assert (directory / name).read_bytes() == data
        assert hashes.sha256(directory / name) == sha(data)  # what `Checkpoint.digest` uses


def chunks(inbox: CheckpointInbox, files: dict[str, bytes],
           order: list[str]) -> list[Callable[[], bool]]:
    return [partial(inbox.put, name, offset, files[name][offset:offset + 1024],
                    sha(files[name]))
            for name in order for offset in range(0, len(files[name]), 1024)]


def test_another_deployment_cannot_overwrite_a_verified_file(tmp_path: Path) -> None:
    """The reviewer's interleaving: the honest inbox verifies the weights, one deployment
    overwrites them at another size, a second at the honest size, then the honest inbox
    receives its last file and publishes."""
    root, cache = tmp_path / "checkpoints", ShardCache(tmp_path / "cache")
    hashes = FileHashes(tmp_path / "file-hashes.json")

    def inbox(files: dict[str, bytes]) -> CheckpointInbox:
        return CheckpointInbox(root, DIGEST, [(n, len(d)) for n, d in files.items()], cache,
                               hashes)

    honest, other_size, same_size = inbox(FILES), inbox(OTHER_SIZES), inbox(SAME_SIZES)
    send(honest, {"model.safetensors": FILES["model.safetensors"]})
    send(other_size, {"model.safetensors": OTHER_SIZES["model.safetensors"]})
    send(same_size, {"model.safetensors": SAME_SIZES["model.safetensors"]})
    send(honest, {"config.json": FILES["config.json"]})
    assert honest.complete
    assert_published_honestly(root, hashes)


@pytest.mark.parametrize("seed", range(40))
def test_interleaved_deployments_never_publish_poison(tmp_path: Path, seed: int) -> None:
    """Chunks of one honest and two malicious deployments of one digest, interleaved at
    random (each deployment's files in a random order): a malicious set is refused, and
    the published checkpoint is always the honest one with truthful remembered hashes."""
    rng = random.Random(seed)
    root, cache = tmp_path / "checkpoints", ShardCache(tmp_path / "cache")
    hashes = FileHashes(tmp_path / "file-hashes.json")
    queues: dict[str, list[Callable[[], bool]]] = {}
    for label, files in (("honest", FILES), ("same", SAME_SIZES), ("other", OTHER_SIZES)):
        inbox = CheckpointInbox(root, DIGEST, [(n, len(d)) for n, d in files.items()], cache,
                                hashes)
        queues[label] = chunks(inbox, files, rng.sample(list(files), len(files)))
    refused = set()
    while any(queues.values()):
        label = rng.choice([label for label, steps in queues.items() if steps])
        step = queues[label].pop(0)
        if label == "honest":
            step()
            continue
        try:
            step()
        except ShardIntegrityError:
            refused.add(label)
    assert_published_honestly(root, hashes)
    assert list(cache.partial.iterdir()) == []  # refused sets deleted, the honest one moved
    assert refused <= {"same", "other"}


def test_each_deployment_counts_against_the_agents_quota_until_it_closes(
    tmp_path: Path,
) -> None:
    cache = ShardCache(tmp_path / "cache", UploadQuota(limit_bytes=10_000))
    first = CheckpointInbox(tmp_path, DIGEST, [("model.safetensors", 8_000)], cache)
    for offset in range(0, 6_000, 1_000):
        assert not first.put("model.safetensors", offset, b"x" * 1_000, "0" * 64)
    with pytest.raises(UploadQuotaError, match="already holds"):  # no directory shared
        CheckpointInbox(tmp_path, DIGEST, [("model.safetensors", 8_000)], cache)
    first.close()  # the deployment ended: its files in transit go, and it takes no more
    assert list(cache.partial.iterdir()) == []
    with pytest.raises(DeployError, match="closed"):
        first.put("model.safetensors", 6_000, b"x" * 1_000, "0" * 64)
    CheckpointInbox(tmp_path, DIGEST, [("model.safetensors", 8_000)], cache)
