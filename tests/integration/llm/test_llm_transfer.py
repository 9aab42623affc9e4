"""Agents that cannot read the checkpoint receive its files, once (content-addressed)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import edge_runtime as er
from edge_runtime.agent.cache import ShardCache
from edge_runtime.agent.llm_files import CheckpointInbox
from edge_runtime.errors import DeployError, ShardIntegrityError
from edge_runtime.llm.checkpoint import content_digest

IDS = (1, 5, 17, 33, 99, 150, 7, 8, 9)


def test_files_are_sent_once_and_the_model_is_exact(
    cluster: er.LocalCluster, checkpoint: Callable[[str], Path],
    reference: Callable[[str, tuple[int, ...]], np.ndarray],
) -> None:
    ckpt = checkpoint("llama_sharded")  # several safetensors files and an index
    size = sum(f.stat().st_size for f in ckpt.iterdir()
               if f.suffix == ".safetensors" or f.name in ("config.json",
                                                           "model.safetensors.index.json"))
    names = [a.name for a in cluster.agents][:2]
    seen: list[tuple[str, int, int]] = []
    llm = cluster.deploy_llm(ckpt, max_context=32, devices=names, send_checkpoint=True,
                             progress=lambda agent, done, total: seen.append((agent, done, total)))
    try:
        assert llm.bytes_sent == 2 * size
        assert {agent for agent, _, _ in seen} == set(names)
        assert all(done <= total for _, done, total in seen)
        assert np.abs(llm.logits(list(IDS)) - reference("llama_sharded", IDS)).max() <= 1e-3
    finally:
        llm.unload()
    again = cluster.deploy_llm(ckpt, max_context=32, devices=names, send_checkpoint=True)
    try:
        assert again.bytes_sent == 0  # both agents kept the files in their caches
        assert np.abs(again.logits(list(IDS)) - reference("llama_sharded", IDS)).max() <= 1e-3
    finally:
        again.unload()


def test_inbox_refuses_corrupted_or_unexpected_files(tmp_path: Path) -> None:
    data = b"x" * 1000
    good = hashlib.sha256(data).hexdigest()
    digest = content_digest([("config.json", good)])  # the set must match it too
    cache = ShardCache(tmp_path / "cache")
    inbox = CheckpointInbox(tmp_path, digest, [("config.json", len(data))], cache)
    assert inbox.missing() == ["config.json"]
    assert not inbox.put("config.json", 0, data[:600], "0" * 64)
    with pytest.raises(ShardIntegrityError, match="corrupted"):
        inbox.put("config.json", 600, data[600:], "0" * 64)
    assert inbox.missing() == ["config.json"]
    with pytest.raises(DeployError, match="offset"):
        inbox.put("config.json", 600, data[600:], "0" * 64)  # the transfer must restart
    assert not inbox.put("config.json", 0, data[:600], good)
    assert inbox.put("config.json", 600, data[600:], good)
    assert inbox.complete
    with pytest.raises(DeployError, match="not a file of this checkpoint"):
        inbox.put("model.safetensors", 0, b"", good)
    with pytest.raises(DeployError, match="not accepted"):
        CheckpointInbox(tmp_path, digest, [("../evil.json", 1)], cache)
