"""`FallbackPolicy` and `Targets`: the chain is checked when made, cloud targets are
dropped when the policy forbids the cloud, and "local" means this device (no process)."""

from __future__ import annotations

from pathlib import Path

import pytest

import edge_runtime as er
from edge_runtime.errors import ConfigError
from edge_runtime.sdk.fallback.local_llm import LocalCheckpoint
from edge_runtime.sdk.fallback.local_model import LocalModel
from edge_runtime.sdk.fallback.policy import FallbackPolicy, Targets, as_policy

KSERVE = er.KServeV2("http://127.0.0.1:9", "m")
LAN_KSERVE = er.KServeV2("http://127.0.0.1:9", "m", cloud=False)
OPENAI = er.OpenAICompatible("http://127.0.0.1:9/v1", "m")


def test_chain_entries_are_checked_when_the_policy_is_made() -> None:
    with pytest.raises(ConfigError, match="'cloud'"):
        FallbackPolicy(chain=("cluster", "cloud"))
    with pytest.raises(ConfigError, match="not a fallback target"):
        FallbackPolicy(chain=("cluster", object()))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="twice"):
        FallbackPolicy(chain=("cluster", "cluster"))
    with pytest.raises(ConfigError, match="when_away"):
        FallbackPolicy(when_away="later")
    with pytest.raises(ConfigError, match="deadline_s"):
        FallbackPolicy(deadline_s=0)
    with pytest.raises(ConfigError, match="list"):
        as_policy("local")  # type: ignore[arg-type]


def test_a_list_becomes_the_chain_and_a_request_may_override_it() -> None:
    base = FallbackPolicy(allow_cloud=False, when_away="queue")
    policy = as_policy(["cluster", "local"], base)
    assert policy.chain == ("cluster", "local") and not policy.allow_cloud
    assert policy.when_away == "queue" and policy.uses_cluster
    assert not as_policy(["local"]).uses_cluster
    assert as_policy(None, base) is base
    assert base.override(deadline_s=2.0).deadline_s == 2.0


def test_cloud_targets_are_dropped_when_the_cloud_is_barred() -> None:
    targets = Targets()
    chain = ("cluster", "local", KSERVE, LAN_KSERVE, OPENAI)
    allowed = targets.pipeline(FallbackPolicy(chain=chain))
    assert [type(t) for t in allowed] == [LocalModel, er.KServeV2, er.KServeV2]
    private = targets.pipeline(FallbackPolicy(chain=chain, allow_cloud=False))
    assert private == [allowed[0], LAN_KSERVE]  # "local" is built once and kept
    assert targets.llm(FallbackPolicy(chain=chain, allow_cloud=False), Path("ckpt")) == [
        targets.llm(FallbackPolicy(chain=chain), Path("ckpt"))[0]]
    local_llm = targets.llm(FallbackPolicy(chain=chain), Path("ckpt"))
    assert isinstance(local_llm[0], LocalCheckpoint) and not local_llm[0].degraded
    assert local_llm[1:] == [OPENAI]
    targets.close()
