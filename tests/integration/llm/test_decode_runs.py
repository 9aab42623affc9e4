"""Generations decode on the agents: one `llm_step` per generation, not per token.

Three real agents. A generation runs as one decode run (the hub broadcasts each token
to the members, who feed it without the coordinator): its tokens equal step-by-step
decoding (`decode_on_agents = False`), greedy and seeded; the hub answered every token
while only one step came from the coordinator. A stop string (seen only by the
coordinator) and a stream closed early cancel the run on the agents, which stop within
a token or two and serve the next generation unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import edge_runtime as er
from edge_runtime.llm.engine import DecodingRunner, Generation

TINYLM = Path(__file__).resolve().parents[3] / "examples" / "tinylm" / "checkpoint"
IDS = "Once upon a time"
SETTINGS = (
    {},  # greedy
    {"temperature": 0.9, "top_k": 8, "seed": 3},
    {"temperature": 1.1, "seed": 5},  # full rows gathered to the hub
)


@pytest.fixture(scope="module")
def llm(cluster: er.LocalCluster) -> Iterator[er.LlmDeployment]:
    deployed = cluster.deploy_llm(TINYLM, max_context=160)
    yield deployed
    deployed.unload()


def _counts(llm: er.LlmDeployment) -> dict[str, int]:
    hub = list(llm.agents)[llm.plan.hub]
    status = llm.status()[hub]
    return {"steps": status["steps"], "sampled": status["sampled"], "runs": status["runs"]}


def test_a_run_on_the_agents_draws_the_step_by_step_tokens(llm: er.LlmDeployment) -> None:
    assert isinstance(llm.runner, DecodingRunner)
    for settings in SETTINGS:
        before = _counts(llm)
        run = llm.generate(IDS, 24, stop=[], **settings)
        after = _counts(llm)
        assert after["runs"] - before["runs"] == 1, "one decode run for the generation"
        assert after["sampled"] - before["sampled"] == 24, "the hub sampled every token"
        llm.runner.decode_on_agents = False
        try:
            stepped = llm.generate(IDS, 24, stop=[], **settings)
        finally:
            llm.runner.decode_on_agents = True
        assert _counts(llm)["runs"] == after["runs"], "step by step: no run"
        assert run.token_ids == stepped.token_ids, settings
        assert len(run.token_ids) == 24


def test_a_stop_token_ends_the_run_on_the_agents(llm: er.LlmDeployment) -> None:
    full = llm.generate(IDS, 20, stop=[]).token_ids
    stop_id = full[6]
    first = full.index(stop_id)
    before = _counts(llm)
    stopped = llm.generate(IDS, 20, stop=[stop_id])
    assert stopped.token_ids == full[:first + 1] and stopped.finish_reason == "stop"
    assert _counts(llm)["steps"] - before["steps"] == first + 1, "the agents stopped there"


def test_a_stop_string_and_a_closed_stream_cancel_the_run(llm: er.LlmDeployment) -> None:
    full = llm.generate(IDS, 100, stop=[])
    assert len(full.token_ids) == 100
    # a stop string is seen by the coordinator only: the run is cancelled after it
    text = full.text
    assert len(text) > 20, "tinylm speaks bytes: one character per token"
    stop_text = text[10:12]
    before = _counts(llm)
    stopped = llm.generate(IDS, 100, stop=[stop_text])
    assert stopped.finish_reason == "stop" and stopped.text.endswith(stop_text)
    assert len(stopped.token_ids) <= 12
    steps = _counts(llm)["steps"] - before["steps"]
    assert steps < 100, f"the agents ran {steps} steps of a cancelled run"
    # a stream closed after 3 tokens
    stream = llm.generate(IDS, 100, stop=[], stream=True)
    assert not isinstance(stream, Generation)
    got = [next(stream).token_id for _ in range(3)]
    before = _counts(llm)
    stream.close()  # type: ignore[attr-defined]
    time.sleep(0.2)
    assert got == list(full.token_ids[:3])
    assert _counts(llm)["steps"] - before["steps"] < 97, "the run went on to the end"
    # the next generation is served unchanged (no stray answers of the cancelled runs)
    assert llm.generate(IDS, 100, stop=[]).token_ids == full.token_ids
