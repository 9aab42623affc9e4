"""An LLM deploy tells what the agents do after the files arrived: real agents convert
their shares, the coordinator polls their status, and the `progress` callback sees each
agent's conversion (by task name) end at its total; a cached share tells nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

import edge_runtime as er
from edge_runtime.agent.llm_load import CONVERT_TASK, QUANTIZE_TASK
from edge_runtime.llm.checkpoint import Checkpoint
from edge_runtime.llm.synthetic import SyntheticShape, write_synthetic_checkpoint
from edge_runtime.sdk import llm_place
from edge_runtime.sdk.llm_files import SEND_TASK
from edge_runtime.sdk.progress import ProgressEvent

TINYLM = Path(__file__).parents[3] / "examples" / "tinylm" / "checkpoint"


def test_deploy_reports_conversion_progress_until_each_total(tmp_path: Path) -> None:
    blocks = 2 * Checkpoint(TINYLM).config.layers + 2  # two per layer, LM head, embedding
    events: list[ProgressEvent] = []
    caches = [tmp_path / "cache0", tmp_path / "cache1"]
    with er.local_cluster(2, log_level="WARNING", cache_dirs=caches) as cluster:
        llm = cluster.deploy_llm(TINYLM, send_checkpoint=True, progress=events.append)
        converting = [e for e in events if e.task == CONVERT_TASK]
        assert {e.agent for e in converting} == {"agent0", "agent1"}
        for agent in ("agent0", "agent1"):
            mine = [e for e in converting if e.agent == agent]
            assert all(e.unit == "blocks" and e.total == blocks for e in mine)
            assert [e.done for e in mine] == sorted(e.done for e in mine)  # never back
            assert mine[-1].finished and mine[-1].done == blocks  # ends at its total
            assert sum(e.finished for e in mine) == 1  # told once at the end
            # timed by the agent from the task's start: a real rate, nothing left
            assert mine[-1].elapsed_s > 0 and mine[-1].eta_s == 0.0
            assert mine[-1].rate <= blocks / mine[-1].elapsed_s * 1.001
            sent = [i for i, e in enumerate(events) if e.task == SEND_TASK and e.agent == agent]
            assert sent and sent[-1] < events.index(mine[-1])  # files first, then conversion
        assert llm.generate("Once", max_new_tokens=2).text is not None
        llm.unload()
        # the shares are in the agents' caches now: a redeploy sends and converts nothing
        events.clear()
        cluster.deploy_llm(TINYLM, send_checkpoint=True, progress=events.append).unload()
        assert events == []


def test_a_conversion_longer_than_a_poll_shows_while_it_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # ~50 MB of weights, 16 layers: converting takes a few tenths of a second, and the
    # coordinator polls every 10 ms instead of every 0.5 s, so it sees the work move
    shape = SyntheticShape(hidden=256, intermediate=704, layers=16, heads=4, kv_heads=4,
                           vocab=2048, max_position_embeddings=128)
    checkpoint = write_synthetic_checkpoint(tmp_path / "synthetic", shape)
    monkeypatch.setattr(llm_place, "READY_POLL_S", 0.01)
    events: list[ProgressEvent] = []
    with er.local_cluster(1, log_level="WARNING", cache_dirs=[tmp_path / "cache"]) as cluster:
        cluster.deploy_llm(checkpoint, max_context=64, send_checkpoint=True,
                           progress=events.append).unload()
    converting = [e for e in events if e.task == CONVERT_TASK]
    total = 2 * shape.layers + 2
    assert converting[-1].done == total and converting[-1].finished
    moving = [e.done for e in converting if 0 < e.done < total]
    assert moving, [e.done for e in converting]  # seen mid-way, not only at the end
    assert moving == sorted(moving)


def test_a_q4_deploy_reports_quantization_to_its_total(tmp_path: Path) -> None:
    events: list[ProgressEvent] = []
    caches = [tmp_path / "c0", tmp_path / "c1"]
    with er.local_cluster(2, log_level="WARNING", cache_dirs=caches) as cluster:
        cluster.deploy_llm(TINYLM, quantize="q4", progress=events.append).unload()
    for agent in ("agent0", "agent1"):  # converted, then built as 4-bit kernels
        mine = [e for e in events if e.task == QUANTIZE_TASK and e.agent == agent]
        assert mine and mine[-1].finished and mine[-1].done == mine[-1].total > 0
        assert all(e.unit == "blocks" for e in mine)
        conversion = [i for i, e in enumerate(events) if e.task == CONVERT_TASK
                      and e.agent == agent]
        assert conversion and conversion[-1] < events.index(mine[-1])
