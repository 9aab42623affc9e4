"""LLM weights verified end to end through real agent processes (issue 9, finding 4):
tampered slices are converted again, a checkpoint that is not the announced one is
refused, agents read no path their configuration does not allow, and incomplete
uploads are bounded and expire.

The attacker coordinators here are this test process running modified coordinator code
(`monkeypatch` on the coordinator side only) or sending hand-built requests: the agents
under test are unmodified processes."""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

import edge_runtime as er
from edge_runtime.agent.config import AgentTimeouts
from edge_runtime.errors import CheckpointError, DeployError, ShardIntegrityError, UploadQuotaError
from edge_runtime.llm import Checkpoint, RelativeSpeed
from edge_runtime.llm import checkpoint as checkpoint_module
from edge_runtime.llm.checkpoint import INDEX_NAME
from edge_runtime.protocol import (
    Deploy,
    DeployReply,
    PutChunk,
    PutChunkReply,
    ShardSpec,
    Unload,
    UnloadReply,
)
from edge_runtime.protocol.kinds import LLM_SHARD
from partitioner.tensor import plan_tensor_parallel

IDS = (1, 5, 17, 33, 99, 150, 7, 8, 9)
TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def duo() -> Iterator[er.LocalCluster]:
    """Two agents of their own (their caches are tampered with), no allowed directories."""
    with er.local_cluster(2) as local:
        yield local


def poison(directory: Path, tensor: str = "model.norm.weight") -> None:
    """Other values for one fp32 tensor: same headers, same sizes (the old digest's input)."""
    info = Checkpoint(directory).tensors[tensor]
    with info.file.open("r+b") as handle:
        handle.seek(info.start)
        values = np.frombuffer(handle.read(info.end - info.start), dtype="<f4")
        handle.seek(info.start)
        handle.write((values * -1.5 + 0.25).astype("<f4").tobytes())


def logits_of(cluster: er.LocalCluster, ckpt: Path) -> tuple[np.ndarray, int]:
    llm = cluster.deploy_llm(ckpt, max_context=32)
    try:
        return llm.logits(list(IDS)), llm.bytes_sent
    finally:
        llm.unload()


def lone_spec(cluster: er.LocalCluster, ckpt: Path, **fields: object) -> ShardSpec:
    """A one-agent llm-shard spec for agent0, built by hand (an attacker's coordinator)."""
    config = Checkpoint(ckpt).config
    plan = plan_tensor_parallel(config.decoder_shape(32), [RelativeSpeed("agent0", 1.0)])
    base: dict[str, object] = {
        "checkpoint": str(ckpt), "checkpoint_digest": "0" * 64, "plan_json": plan.to_json(),
        "rank": 0, "names": ("agent0",), "public_keys": (cluster.info("agent0").public_key,),
        "max_context": 32, "memory_budget": None, "memory_bytes": 0,
        "advertise_host": "127.0.0.1"}
    return ShardSpec(**{**base, **fields})  # type: ignore[arg-type]


def deploy_by_hand(cluster: er.LocalCluster, spec: ShardSpec) -> tuple[str, DeployReply]:
    deployment_id = f"llm-{uuid.uuid4().hex[:10]}"
    request = Deploy(deployment_id, LLM_SHARD, spec, cluster.hub.session, 30.0)
    reply = cluster.call("agent0", request, DeployReply, timeout_s=cluster.timeouts.deploy_s)
    return deployment_id, reply


def test_a_tampered_slice_is_converted_again_and_serves_honest_logits(
    duo: er.LocalCluster, checkpoint: Callable[[str], Path],
    reference: Callable[[str, tuple[int, ...]], np.ndarray],
) -> None:
    ckpt, expected = checkpoint("llama"), reference("llama", IDS)
    first, sent = logits_of(duo, ckpt)
    assert np.abs(first - expected).max() <= TOLERANCE
    assert sent > 0  # the agents may not read the test's directory: they were sent it
    agent = duo.processes[0]
    (block,) = (agent.cache_dir / "llm").glob("*/layer0.attn.bin")
    data = bytearray(block.read_bytes())
    data[-64:] = bytes(b ^ 0x5A for b in data[-64:])  # same size: the old check passed it
    block.write_bytes(bytes(data))
    second, sent = logits_of(duo, ckpt)
    assert sent == 0
    assert np.abs(second - expected).max() <= TOLERANCE
    assert np.abs(second - first).max() <= 1e-5
    assert "changed after conversion" in agent.tail(400)


def test_a_checkpoint_other_than_the_announced_one_is_refused_then_honest_weights_served(
    duo: er.LocalCluster, checkpoint: Callable[[str], Path],
    reference: Callable[[str, tuple[int, ...]], np.ndarray],
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a kind no other test here deploys, so no agent holds its honest files yet
    honest = shutil.copytree(checkpoint("llama3"), tmp_path / "honest")
    poisoned = shutil.copytree(checkpoint("llama3"), tmp_path / "poisoned")
    poison(poisoned)
    honest_digest = Checkpoint(honest).digest
    assert Checkpoint(poisoned).digest != honest_digest
    with monkeypatch.context() as attacker:  # announce the honest digest, send other bytes
        attacker.setattr(Checkpoint, "digest", property(lambda self: honest_digest))
        with pytest.raises(ShardIntegrityError, match="announced checkpoint digest"):
            duo.deploy_llm(poisoned, max_context=32)
    served, sent = logits_of(duo, honest)
    assert sent > 0  # nothing of the attacker's files was kept under the honest digest
    assert np.abs(served - reference("llama3", IDS)).max() <= TOLERANCE


@pytest.mark.parametrize("outside", ["../{orig}/{file}", "{root}/{orig}/{file}"])
def test_an_index_naming_files_outside_the_checkpoint_is_refused_by_the_agent(
    duo: er.LocalCluster, checkpoint: Callable[[str], Path],
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outside: str,
) -> None:
    orig = shutil.copytree(checkpoint("llama_sharded"), tmp_path / "orig")
    evil = shutil.copytree(orig, tmp_path / "evil")
    index = json.loads((evil / INDEX_NAME).read_text())
    file = index["weight_map"]["model.norm.weight"]
    entry = outside.format(orig=orig.name, file=file, root=tmp_path)
    # every tensor of that file now points outside the checkpoint directory; the agent is
    # sent a file of that name (the same bytes) and must not follow the index out of it
    index["weight_map"] = {t: entry if f == file else f for t, f in index["weight_map"].items()}
    (evil / INDEX_NAME).write_text(json.dumps(index))
    with monkeypatch.context() as attacker:  # a coordinator that skips its own check
        attacker.setattr(checkpoint_module, "_plain_name", lambda name: True)
        with pytest.raises(CheckpointError, match="weight_map entry") as info:
            duo.deploy_llm(evil, max_context=32, devices=["agent0"])
    assert entry in str(info.value) and "plain file name" in str(info.value)
    assert "agent0" in str(info.value)


def test_a_path_the_agent_does_not_allow_is_never_read(
    duo: er.LocalCluster, checkpoint: Callable[[str], Path],
) -> None:
    ckpt = checkpoint("llama")
    with pytest.raises(DeployError, match="allow-checkpoint-dir"):
        deploy_by_hand(duo, lone_spec(duo, ckpt, checkpoint="/etc"))
    files = tuple((p.name, p.stat().st_size) for p in Checkpoint(ckpt).files)
    deployment_id, reply = deploy_by_hand(duo, lone_spec(duo, ckpt, checkpoint="/etc",
                                                         files=files))
    try:
        assert set(reply.missing_files) == {name for name, _ in files}  # asks, reads nothing
    finally:
        duo.call("agent0", Unload(deployment_id), UnloadReply)


def test_an_allowed_directory_is_read_in_place(
    checkpoint: Callable[[str], Path], reference: Callable[[str, tuple[int, ...]], np.ndarray],
) -> None:
    ckpt = checkpoint("qwen2")
    with er.local_cluster(1, allow_checkpoint_dirs=[ckpt.parent]) as local:
        served, sent = logits_of(local, ckpt)
    assert sent == 0
    assert np.abs(served - reference("qwen2", IDS)).max() <= TOLERANCE


def test_uploads_over_the_quota_are_refused_and_nothing_is_kept(
    duo: er.LocalCluster, checkpoint: Callable[[str], Path],
) -> None:
    partial = duo.processes[0].cache_dir / "partial"
    huge = 1 << 50
    with pytest.raises(UploadQuotaError, match="exceeds"):
        duo.call("agent0", PutChunk("e" * 64, ".onnx", 0, huge), PutChunkReply,
                 {"data": np.zeros(1024, dtype=np.uint8)})
    with pytest.raises(UploadQuotaError, match="exceeds"):
        deploy_by_hand(duo, lone_spec(duo, checkpoint("llama"), checkpoint="",
                                      checkpoint_digest="f" * 64,
                                      files=(("model.safetensors", huge),)))
    assert list(partial.iterdir()) == []


def test_idle_partial_uploads_expire_when_an_agent_starts(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    shard = cache / "partial" / f"{'a' * 64}.onnx.part"
    files = cache / "partial" / f"llm-{'b' * 64}"
    files.mkdir(parents=True)
    shard.write_bytes(b"x" * 1000)
    (files / "config.json").write_bytes(b"{" * 1000)
    fresh = cache / "partial" / f"{'c' * 64}.onnx.part"
    fresh.write_bytes(b"y" * 10)
    stale = time.time() - AgentTimeouts().partial_upload_ttl_s - 5
    for path in (shard, files / "config.json", files):
        os.utime(path, (stale, stale))
    with er.local_cluster(1, cache_dirs=[cache]):
        assert sorted(p.name for p in (cache / "partial").iterdir()) == [fresh.name]
