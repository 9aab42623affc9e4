"""`LocalModel` answers in this process with onnxruntime: the whole model when it fits
its budget, else the deepest early exit that does (degraded), else a `FallbackError`.

Budgets are set between the planner's own estimates (`SegmentMemory` over the
`ModelGraph`), so each test pins which candidate must be chosen; answers are
compared with the whole model run in a plain onnxruntime session.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_runtime.errors import ConfigError, FallbackError
from edge_runtime.sdk.fallback.local_model import LocalModel
from edge_runtime.sdk.fallback.targets import Answer, PipelineFallback
from partitioner.graph import ModelGraph
from partitioner.memory import SegmentMemory
from partitioner.pipeline import stage_memory
from support.fallback_servers import model_info
from support.onnx_models import DIGITS_MODEL, exits_mlp, mlp_chain, random_feeds, run_model


def needs(path: Path, batch: int) -> dict[str, int]:
    """The planner's estimate of each exit's sub-model and of the whole model ("")."""
    graph = ModelGraph.from_onnx(path, batch)
    memory = SegmentMemory(*stage_memory(graph))
    found = {h.name: memory.stage_bytes(0, h.position) for h in graph.exits if not h.final}
    found[""] = memory.stage_bytes(0, len(graph.nodes))
    return found


@pytest.fixture(scope="module")
def exits_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return exits_mlp(tmp_path_factory.mktemp("local") / "exits_mlp.onnx")


def assert_equal_to(answer: Answer, want: dict[str, np.ndarray], names: list[str]) -> None:
    assert sorted(answer.outputs) == sorted(names)
    for name in names:
        np.testing.assert_allclose(answer.outputs[name], want[name], rtol=1e-5, atol=1e-6,
                                   err_msg=name)


def test_whole_model_fits_and_equals_onnxruntime(exits_model: Path, tmp_path: Path) -> None:
    chain = mlp_chain(tmp_path / "mlp.onnx")
    local = LocalModel("64MB", threads=1)
    try:
        assert isinstance(local, PipelineFallback)
        assert (local.name, local.cloud, local.budget_bytes) == ("local", False, 64_000_000)
        for path in (chain, exits_model):
            feeds = random_feeds(path, batch=3)
            answer = local.infer(model_info(path), feeds, timeout_s=5.0)
            want = run_model(path, feeds)
            assert_equal_to(answer, want, list(want))
            assert (answer.served_by, answer.degraded, answer.exit, answer.notes) == (
                "local", False, None, ())
    finally:
        local.close()


@pytest.mark.parametrize("deepest", ["exit2", "exit1"])
def test_small_budget_answers_from_the_deepest_fitting_exit(exits_model: Path,
                                                            deepest: str) -> None:
    need = needs(exits_model, batch=4)
    assert need["exit1"] < need["exit2"] < need[""]
    budget = need[deepest] + 1 if deepest == "exit1" else need[""] - 1
    earlier = ["exit1", "exit2"][: ["exit1", "exit2"].index(deepest) + 1]
    feeds = random_feeds(exits_model, batch=4, seed=7)
    want = run_model(exits_model, feeds)
    local = LocalModel(budget, threads=1)
    try:
        answer = local.infer(model_info(exits_model), feeds, timeout_s=5.0)
    finally:
        local.close()
    assert (answer.served_by, answer.degraded, answer.exit) == ("local", True, deepest)
    assert_equal_to(answer, want, earlier)  # what the cluster answers when that exit fires
    assert answer.notes == (f"whole model needs {need[''] / 1e6:.1f} MB, budget "
                            f"{budget / 1e6:.1f} MB; answered at exit {deepest}",)


def test_digits_model_answers_at_exit2_under_a_tight_budget() -> None:
    need = needs(DIGITS_MODEL, batch=2)
    feeds = {"image": np.random.default_rng(3).random((2, 1, 8, 8), dtype=np.float32)}
    want = run_model(DIGITS_MODEL, feeds)
    local = LocalModel(need[""] - 1)
    try:
        answer = local.infer(model_info(DIGITS_MODEL), feeds, timeout_s=5.0)
    finally:
        local.close()
    assert answer.exit == "exit2" and answer.degraded
    assert_equal_to(answer, want, ["exit1", "exit2"])


def test_the_choice_follows_the_batch_and_the_session_is_rebuilt(exits_model: Path) -> None:
    """Activations grow with the batch: a budget that holds the whole model for one row
    holds only an exit for 2,000 rows, and back again (from the cached estimates)."""
    small, large = needs(exits_model, batch=1), needs(exits_model, batch=2000)
    budget = (large["exit2"] + large[""]) // 2
    assert small[""] < budget
    local = LocalModel(budget, threads=1)
    info = model_info(exits_model)
    try:
        for batch, exit_name in ((1, None), (2000, "exit2"), (1, None), (2000, "exit2")):
            feeds = random_feeds(exits_model, batch=batch, seed=batch)
            answer = local.infer(info, feeds, timeout_s=5.0)
            assert answer.exit == exit_name, batch
            want = run_model(exits_model, feeds)
            assert_equal_to(answer, want, ["exit1", "exit2"] if exit_name else list(want))
    finally:
        local.close()


def test_the_session_is_built_once_and_reused(tmp_path: Path) -> None:
    path = mlp_chain(tmp_path / "mlp.onnx")
    info = model_info(path)
    feeds = random_feeds(path, batch=2)
    want = run_model(path, feeds)["y"]
    local = LocalModel("64MB", threads=1)
    try:
        first = local.infer(info, feeds, timeout_s=5.0)
        path.write_bytes(b"not a model any more")  # a rebuild would now fail
        second = local.infer(info, feeds, timeout_s=5.0)
    finally:
        local.close()
    np.testing.assert_allclose(first.outputs["y"], want, rtol=1e-6)
    np.testing.assert_array_equal(second.outputs["y"], first.outputs["y"])


def test_too_small_a_budget_is_refused(exits_model: Path, tmp_path: Path) -> None:
    need = needs(exits_model, batch=2)
    local = LocalModel(need["exit1"] - 1)
    with pytest.raises(FallbackError, match=r"first exit exit1 .* budget of") as caught:
        local.infer(model_info(exits_model), random_feeds(exits_model, 2), timeout_s=5.0)
    assert caught.value.target == "local"
    chain = mlp_chain(tmp_path / "mlp.onnx")
    with pytest.raises(FallbackError, match="has no early exit"):
        LocalModel("1KB").infer(model_info(chain), random_feeds(chain, 2), timeout_s=5.0)


def test_bad_inputs_and_budgets_are_typed_errors(exits_model: Path) -> None:
    with pytest.raises(ConfigError, match="512MB"):
        LocalModel("lots")
    local = LocalModel("64MB")
    wrong = {"x": np.zeros((2, 15), np.float32)}
    with pytest.raises(FallbackError, match=r"x is float32\[2, 15\]"):
        local.infer(model_info(exits_model), wrong, timeout_s=5.0)


def test_the_default_budget_is_half_of_available_memory() -> None:
    import psutil

    available = psutil.virtual_memory().available
    assert 0.4 * available < LocalModel().budget_bytes < 0.6 * available
