"""Generation behaviour: sampling with seeds, stop tokens, streaming, and bad requests."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.errors import CheckpointError, GenerationError, MemoryBudgetError, PartitionError
from edge_runtime.llm import LlmEngine, LocalRunner, RelativeSpeed, load_local_engine

PROMPT = [1, 40, 41, 42, 43]


@pytest.fixture()
def engine(
    checkpoint: Callable[[str], Path], slice_cache: Path
) -> Iterator[tuple[LlmEngine, LocalRunner]]:
    eng, runner = load_local_engine(
        checkpoint("llama"),
        cache_dir=slice_cache,
        devices=[RelativeSpeed("a", 1.0), RelativeSpeed("b", 1.0)],
        max_context=32,
    )
    yield eng, runner
    runner.close()


def test_seeded_sampling_reproduces(engine: tuple[LlmEngine, LocalRunner]) -> None:
    eng, _ = engine
    kw = {"temperature": 1.5, "top_k": 50, "top_p": 0.95, "stop": []}
    a = eng.generate(PROMPT, 12, seed=7, **kw)  # type: ignore[arg-type]
    b = eng.generate(PROMPT, 12, seed=7, **kw)  # type: ignore[arg-type]
    c = eng.generate(PROMPT, 12, seed=8, **kw)  # type: ignore[arg-type]
    greedy = eng.generate(PROMPT, 12, stop=[])
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids or a.token_ids != greedy.token_ids
    assert len(a.token_ids) == 12 and a.finish_reason == "length"


def test_stop_token_ends_generation(engine: tuple[LlmEngine, LocalRunner]) -> None:
    eng, _ = engine
    full = eng.generate(PROMPT, 10, stop=[])
    stop_at = full.token_ids[3]
    first = full.token_ids.index(stop_at)
    got = eng.generate(PROMPT, 10, stop=[stop_at])
    assert got.token_ids == full.token_ids[: first + 1]
    assert got.finish_reason == "stop"


def test_stream_yields_the_same_tokens_as_generate(engine: tuple[LlmEngine, LocalRunner]) -> None:
    eng, _ = engine
    events = list(eng.stream(PROMPT, 8, stop=[]))
    assert [e.index for e in events] == list(range(8))
    assert tuple(e.token_id for e in events) == eng.generate(PROMPT, 8, stop=[]).token_ids
    assert all(b.seconds >= a.seconds for a, b in itertools.pairwise(events))


def test_prompt_longer_than_context(engine: tuple[LlmEngine, LocalRunner]) -> None:
    eng, runner = engine
    with pytest.raises(GenerationError, match="context of 32 tokens"):
        eng.generate(list(range(3, 30)), max_new_tokens=10)
    with pytest.raises(GenerationError, match="context"):
        eng.logits(list(range(3, 40)))
    # nothing was run: the windows saw no use
    assert all(s.uses == 0 for s in runner.stats())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"prompt": []}, "empty"),
        ({"prompt": [1, 999]}, "outside the vocabulary"),
        ({"prompt": "hello"}, "no tokenizer"),
        ({"prompt": PROMPT, "temperature": -1.0}, "temperature"),
        ({"prompt": PROMPT, "top_p": 0.0}, "top_p"),
        ({"prompt": PROMPT, "max_new_tokens": 0}, "max_new_tokens"),
    ],
)
def test_bad_requests_are_typed(
    engine: tuple[LlmEngine, LocalRunner], kwargs: dict[str, object], match: str
) -> None:
    eng, _ = engine
    with pytest.raises(GenerationError, match=match):
        eng.generate(**kwargs)  # type: ignore[arg-type]
    assert eng.generate(PROMPT, 2).token_ids  # the engine keeps serving


def test_budget_too_small_for_one_block_fails_before_loading(
    checkpoint: Callable[[str], Path], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    with pytest.raises((MemoryBudgetError, PartitionError), match="memory budget"):
        load_local_engine(
            checkpoint("llama"),
            cache_dir=cache,
            devices=[RelativeSpeed("a", 1.0), RelativeSpeed("b", 1.0)],
            memory_budgets=[1_000_000, 1_000_000],
            max_context=32,
        )
    assert not cache.exists()  # refused at planning time: nothing converted, nothing loaded


def test_window_check_uses_real_block_sizes(
    checkpoint: Callable[[str], Path], slice_cache: Path
) -> None:
    from edge_runtime.llm import Checkpoint, convert_share, window_budget
    from edge_runtime.llm.local import kv_cache_bytes
    from partitioner.tensor import ACTIVATION_RESERVE_BYTES, plan_tensor_parallel

    ck = Checkpoint(checkpoint("llama"))
    plan = plan_tensor_parallel(ck.config.decoder_shape(32), [RelativeSpeed("a", 1.0)])
    share = plan.shares[0]
    slices = convert_share(ck, share, slice_cache)
    largest = max(b.nbytes for b in slices.blocks)
    fixed = ACTIVATION_RESERVE_BYTES + kv_cache_bytes(ck.config, share, 32)
    assert window_budget(ck.config, share, slices, fixed + largest, 32) == largest
    assert window_budget(ck.config, share, slices, None, 32) is None
    with pytest.raises(MemoryBudgetError, match=f"use at least {(fixed + largest) / 1e6:.1f} MB"):
        window_budget(ck.config, share, slices, fixed + largest - 1, 32)


def test_corrupt_slice_cache_is_rebuilt(checkpoint: Callable[[str], Path], tmp_path: Path) -> None:
    kw = {"cache_dir": tmp_path, "devices": [RelativeSpeed("a", 1.0)], "max_context": 16}
    eng, runner = load_local_engine(checkpoint("llama"), **kw)  # type: ignore[arg-type]
    want = eng.logits(PROMPT)
    runner.close()
    block = next(tmp_path.glob("*/layer1.mlp.bin"))
    block.write_bytes(block.read_bytes()[:100])
    eng, runner = load_local_engine(checkpoint("llama"), **kw)  # type: ignore[arg-type]
    try:
        np.testing.assert_array_equal(eng.logits(PROMPT), want)
    finally:
        runner.close()


def test_missing_block_file_fails_the_call(
    checkpoint: Callable[[str], Path], tmp_path: Path
) -> None:
    budgets = [None]
    eng, runner = load_local_engine(
        checkpoint("llama"),
        cache_dir=tmp_path,
        devices=[RelativeSpeed("a", 1.0)],
        memory_budgets=budgets,
        max_context=16,
    )
    runner.close()
    # A streaming worker whose block disappears from disk fails with a typed error.
    from edge_runtime.llm.local import kv_cache_bytes
    from partitioner.tensor import ACTIVATION_RESERVE_BYTES

    share = runner.plan.shares[0]
    largest = max(b.nbytes for b in runner.workers[0].blocks)
    budget = ACTIVATION_RESERVE_BYTES + kv_cache_bytes(runner.config, share, 16) + 2 * largest
    eng, runner = load_local_engine(
        checkpoint("llama"),
        cache_dir=tmp_path,
        devices=[RelativeSpeed("a", 1.0)],
        memory_budgets=[budget],
        max_context=16,
    )
    try:
        next(tmp_path.glob("*/layer1.mlp.bin")).unlink()  # not yet read ahead
        with pytest.raises(CheckpointError, match=r"layer1\.mlp"):
            eng.logits(PROMPT)
    finally:
        runner.close()


def test_a_failing_worker_fails_the_step_not_hangs(
    checkpoint: Callable[[str], Path], tmp_path: Path
) -> None:
    import shutil
    import time

    devices = [RelativeSpeed("a", 1.0), RelativeSpeed("b", 1.0)]
    probe = LocalRunner(checkpoint("llama"), cache_dir=tmp_path, devices=devices, max_context=16)
    probe.close()
    from edge_runtime.llm.local import kv_cache_bytes
    from partitioner.tensor import ACTIVATION_RESERVE_BYTES

    budgets: list[int | None] = [
        None,
        ACTIVATION_RESERVE_BYTES
        + kv_cache_bytes(probe.config, probe.plan.shares[1], 16)
        + 2 * max(b.nbytes for b in probe.workers[1].blocks),
    ]
    eng, runner = load_local_engine(
        checkpoint("llama"),
        cache_dir=tmp_path,
        devices=devices,
        memory_budgets=budgets,
        max_context=16,
    )
    try:
        want = eng.logits(PROMPT)
        victim = runner.workers[1].blocks[3].path  # layer1.mlp of the streaming worker
        saved = victim.with_suffix(".saved")
        shutil.move(victim, saved)
        t0 = time.perf_counter()
        with pytest.raises(CheckpointError, match=r"layer1\.mlp"):
            eng.logits(PROMPT)
        assert time.perf_counter() - t0 < 5.0  # the healthy worker did not wait for a timeout
        shutil.move(saved, victim)
        # the same deployment keeps serving once the file is back, with the same numbers
        np.testing.assert_array_equal(eng.logits(PROMPT), want)
    finally:
        runner.close()
