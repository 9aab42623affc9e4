"""A pipeline deploy reports typed progress for every shard it sends, and callbacks of
the earlier (agent, done, total) form still get their calls."""

from __future__ import annotations

from pathlib import Path

import edge_runtime as er
from edge_runtime.sdk.progress import ProgressEvent

ROOT = Path(__file__).parents[3]
DIGITS = ROOT / "examples" / "digits" / "digits_exits.onnx"


def test_shard_uploads_report_progress_records() -> None:
    events: list[ProgressEvent] = []
    old: list[tuple[str, int, int]] = []
    with er.local_cluster(2, log_level="WARNING") as cluster:
        model = cluster.deploy(DIGITS, strategy="pipeline", devices=["agent0", "agent1"],
                               progress=events.append)
        ends = [e for e in events if e.finished]
        assert len(ends) == len(model.plan.stages)  # one finished transfer per shard
        assert all(e.task.startswith("sending shard ") and e.unit == "B" for e in events)
        assert {e.agent for e in ends} == {s.device for s in model.plan.stages}
        assert all(e.eta_s == 0.0 and e.done == e.total > 0 for e in ends)
        model.unload()
        # a callback of the earlier form: adapted, it still sees each shard to the end
        single = cluster.deploy(DIGITS, strategy="single", devices=["agent1"],
                                progress=lambda agent, done, total: old.append(
                                    (agent, done, total)))
        assert old and old[-1][0] == "agent1" and old[-1][1] == old[-1][2] > 0
        single.unload()
        # the agents' caches hold the shards now: deploying again sends nothing
        events.clear()
        cluster.deploy(DIGITS, strategy="pipeline", devices=["agent0", "agent1"],
                       progress=events.append)
        assert events == []
