"""Batched forward: several sequences in one step, each in its own KV slot, each equal
to its run alone (in-process workers; the same worker code runs in the agents).

Prefills of different lengths batched together, then a batched decode step, on every
tiny architecture and on a two-worker split; logits equal the one-sequence path within
float tolerance and transformers within 1e-3.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.errors import GenerationError
from edge_runtime.llm import LocalRunner, RelativeSpeed
from edge_runtime.llm.engine import BatchItem
from edge_runtime.llm.local import kv_cache_bytes
from partitioner.tensor import ACTIVATION_RESERVE_BYTES
from support import hf_checkpoints as hf

PROMPTS = [(1, 5, 17, 33, 99), (2, 9), (7, 7, 7, 120, 3, 44, 12)]
TOL = 1e-5  # float32 sums in another order (stacked tokens) than the one-sequence path


def alone(runner: LocalRunner, prompt: tuple[int, ...]) -> np.ndarray:
    return runner.forward(list(prompt), 0, last_only=False)


@pytest.mark.parametrize("kind", sorted(hf.KINDS))
@pytest.mark.parametrize("workers", [1, 2])
def test_a_batch_equals_each_sequence_alone(
    kind: str, workers: int, checkpoint: Callable[[str], Path],
    reference: Callable[[str, tuple[int, ...]], np.ndarray], slice_cache: Path,
) -> None:
    devices = [RelativeSpeed(f"dev{i}", 1.0 + i) for i in range(workers)]
    runner = LocalRunner(checkpoint(kind), cache_dir=slice_cache, devices=devices,
                         max_context=32, slots=len(PROMPTS))
    try:
        assert all(w.packed for w in runner.workers)  # batching shares get packed kernels
        assert all(0 < w.packed_bytes <= sum(b.nbytes for b in w.blocks)
                   for w in runner.workers)
        want = [alone(runner, p) for p in PROMPTS]  # slot 0, one at a time
        items = [BatchItem(i, p, 0) for i, p in enumerate(PROMPTS)]
        every = runner.forward_batch(items, last_only=False)
        lows = np.cumsum([0] + [len(p) for p in PROMPTS])
        for i, w in enumerate(want):
            np.testing.assert_allclose(every[lows[i]:lows[i + 1]], w, rtol=TOL, atol=TOL)
            assert np.abs(w - reference(kind, PROMPTS[i])).max() <= 1e-3
        # decode: one more token for each sequence, batched
        nxt = [int(np.argmax(w[-1])) for w in want]
        step = [BatchItem(i, (nxt[i],), len(p)) for i, p in enumerate(PROMPTS)]
        last = runner.forward_batch(step, last_only=True)
        for i, p in enumerate(PROMPTS):
            full = alone(runner, (*p, nxt[i]))
            np.testing.assert_allclose(last[i], full[-1], rtol=TOL, atol=TOL)
    finally:
        runner.close()


def test_a_budget_that_cannot_hold_the_weights_twice_keeps_numpy(
    checkpoint: Callable[[str], Path], slice_cache: Path
) -> None:
    ckpt = checkpoint("llama")
    probe = LocalRunner(ckpt, cache_dir=slice_cache, max_context=16, slots=2)
    worker = probe.workers[0]
    weights = sum(b.nbytes for b in worker.blocks)
    kv = 2 * kv_cache_bytes(probe.config, worker.share, 16)
    probe.close()
    budget = ACTIVATION_RESERVE_BYTES + kv + int(1.5 * weights)  # resident, but not twice
    runner = LocalRunner(ckpt, cache_dir=slice_cache, max_context=16, slots=2,
                         memory_budgets=[budget])
    try:
        assert not runner.workers[0].packed and runner.workers[0].packed_bytes == 0
        items = [BatchItem(0, PROMPTS[0], 0), BatchItem(1, PROMPTS[1], 0)]
        both = runner.forward_batch(items)
        np.testing.assert_allclose(both[1], alone(runner, PROMPTS[1])[-1], rtol=TOL, atol=TOL)
    finally:
        runner.close()


def test_a_batch_refuses_a_slot_twice_or_beyond(
    checkpoint: Callable[[str], Path], slice_cache: Path
) -> None:
    runner = LocalRunner(checkpoint("llama"), cache_dir=slice_cache, max_context=16, slots=2)
    try:
        with pytest.raises(GenerationError, match="twice"):
            runner.forward_batch([BatchItem(0, (1,), 0), BatchItem(0, (2,), 0)])
        with pytest.raises(GenerationError, match="slot 2"):
            runner.forward_batch([BatchItem(2, (1,), 0)])
    finally:
        runner.close()
