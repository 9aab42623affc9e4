"""Bad checkpoints, budgets and prompts fail with typed errors before any agent loads
anything, and the agents keep serving (real agent processes)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

import edge_runtime as er
from edge_runtime.errors import CheckpointError, ConfigError, GenerationError
from partitioner.errors import InfeasiblePlanError


def copy(src: Path, dst: Path, **config_changes: object) -> Path:
    shutil.copytree(src, dst)
    if config_changes:
        path = dst / "config.json"
        config = json.loads(path.read_text())
        config.update(config_changes)
        path.write_text(json.dumps(config))
    return dst


def assert_nothing_loaded(cluster: er.LocalCluster) -> None:
    for name, status in cluster.status().items():
        assert status["available"], name
        assert status["deployments"] == {}, name


def test_unsupported_config(cluster: er.LocalCluster, checkpoint: Callable[[str], Path],
                            tmp_path: Path) -> None:
    bad = copy(checkpoint("llama"), tmp_path / "gelu", hidden_act="gelu")
    with pytest.raises(CheckpointError, match="hidden_act"):
        cluster.deploy_llm(bad)
    bad = copy(checkpoint("llama"), tmp_path / "gpt2", model_type="gpt2")
    with pytest.raises(CheckpointError, match="model_type"):
        cluster.deploy_llm(bad)
    assert_nothing_loaded(cluster)


def test_missing_shard(cluster: er.LocalCluster, checkpoint: Callable[[str], Path],
                       tmp_path: Path) -> None:
    bad = copy(checkpoint("llama_sharded"), tmp_path / "sharded")
    shards = sorted(bad.glob("model-*.safetensors"))
    assert len(shards) > 2
    shards[1].unlink()
    with pytest.raises(CheckpointError, match="missing"):
        cluster.deploy_llm(bad)
    assert_nothing_loaded(cluster)


def test_tensors_that_do_not_match_the_config(
    cluster: er.LocalCluster, checkpoint: Callable[[str], Path], tmp_path: Path
) -> None:
    bad = copy(checkpoint("llama"), tmp_path / "mismatch", intermediate_size=128)
    with pytest.raises(CheckpointError, match="do not match"):
        cluster.deploy_llm(bad)
    assert_nothing_loaded(cluster)


def test_budget_too_small_for_one_block(cluster: er.LocalCluster,
                                        checkpoint: Callable[[str], Path]) -> None:
    with pytest.raises(InfeasiblePlanError, match="memory budget"):
        cluster.deploy_llm(checkpoint("llama"), memory_budget="20MB", max_context=48)
    assert_nothing_loaded(cluster)


def test_bad_arguments(cluster: er.LocalCluster, checkpoint: Callable[[str], Path],
                       tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="strategy"):
        cluster.deploy_llm(checkpoint("llama"), strategy="ring")
    with pytest.raises(ConfigError, match="no agent named"):
        cluster.deploy_llm(checkpoint("llama"), devices=["nope"])
    with pytest.raises(CheckpointError, match="not a directory"):
        cluster.deploy_llm(tmp_path / "absent")
    assert_nothing_loaded(cluster)


def test_prompt_longer_than_the_context(cluster: er.LocalCluster,
                                        checkpoint: Callable[[str], Path]) -> None:
    llm = cluster.deploy_llm(checkpoint("llama"), max_context=16)
    try:
        with pytest.raises(GenerationError, match="context of 16"):
            llm.generate(list(range(3, 15)), max_new_tokens=8)
        with pytest.raises(GenerationError, match="outside the vocabulary"):
            llm.logits([1, 2, 10_000])
        # nothing was sent: the deployment still answers correctly
        assert llm.generate(list(range(3, 9)), max_new_tokens=4).token_ids
    finally:
        llm.unload()
    assert_nothing_loaded(cluster)
