"""Every placement the residency policy chooses gives the same logits as transformers
(fp32, within 1e-3) and as the all-resident path (int8 streaming of a "q4" share: exact),
through the real window reading real slice files, pass after pass.

In-process workers (the agents run the same `TensorWorker`); budgets swept from one
block to the whole share so the policy picks sliding windows, mixed placements and
all-resident ones.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.errors import ConfigError, MemoryBudgetError
from edge_runtime.llm import Checkpoint, LocalRunner, RelativeSpeed, convert_share
from edge_runtime.llm.local import kv_cache_bytes
from edge_runtime.llm.worker import TensorWorker
from partitioner.tensor import ACTIVATION_RESERVE_BYTES, plan_tensor_parallel

IDS = (1, 5, 17, 33, 99, 4, 8)
CONTEXT = 32


def sweep(lo: int, hi: int, steps: int = 7) -> list[int]:
    return sorted({int(lo + (hi - lo) * k / (steps - 1)) for k in range(steps)})


@pytest.mark.parametrize("workers", [1, 2])
def test_fp32_logits_match_transformers_for_every_placement(
    workers: int, checkpoint: Callable[[str], Path],
    reference: Callable[[str, tuple[int, ...]], np.ndarray], tmp_path: Path,
) -> None:
    ckpt = checkpoint("llama")
    devices = [RelativeSpeed(f"d{i}", 1.0) for i in range(workers)]
    probe = LocalRunner(ckpt, cache_dir=tmp_path, devices=devices, max_context=CONTEXT)
    probe.close()
    fixed = [ACTIVATION_RESERVE_BYTES + kv_cache_bytes(probe.config, w.share, CONTEXT)
             for w in probe.workers]
    largest = max(b.nbytes for w in probe.workers for b in w.blocks)
    total = max(sum(b.nbytes for b in w.blocks) for w in probe.workers)
    ref = reference("llama", IDS)
    placements = set()
    for window in sweep(int(largest * 1.05) + 64, total + 1):
        runner = LocalRunner(ckpt, cache_dir=tmp_path, devices=devices, max_context=CONTEXT,
                             memory_budgets=[f + window for f in fixed])
        try:
            first = runner.forward(list(IDS), 0, last_only=False)
            second = runner.forward(list(IDS), 0, last_only=False)
            stats = runner.stats()
            for w, st in zip(runner.workers, stats, strict=True):
                assert w.residency is not None and w.window is not None
                placements.add(w.residency.resident)
                assert w.window.pinned == w.residency.resident
                assert st.peak_loaded_bytes <= st.budget_bytes
                # pinned blocks are read once; streamed ones on every pass
                assert st.loads >= len(w.residency.resident) + 2 * len(w.residency.streamed)
        finally:
            runner.close()
        assert np.abs(first - ref).max() <= 1e-3
        np.testing.assert_array_equal(first, second)
    n = len(probe.workers[0].blocks)
    assert () in placements  # a sliding window of the whole budget
    assert any(0 < len(p) < n for p in placements)  # mixed
    assert tuple(range(n)) in placements  # all resident


def int8_worker(ckpt_dir: Path, cache: Path, window: int | None) -> TensorWorker:
    ckpt = Checkpoint(ckpt_dir)
    plan = plan_tensor_parallel(ckpt.config.decoder_shape(CONTEXT), [RelativeSpeed("a", 1.0)],
                                streaming=True, model_digest=ckpt.digest)
    slices = convert_share(ckpt, plan.shares[0], cache)
    return TensorWorker(ckpt.config, slices, plan.shares[0], max_context=CONTEXT,
                        window_budget_bytes=window, quantize="q4", stream_quantized=True)


def logits(worker: TensorWorker) -> np.ndarray:
    out = worker.forward(list(IDS), list(range(len(IDS))), lambda x: x, lambda x: x,
                         last_only=False)
    assert out is not None
    return out


def test_int8_streaming_equals_itself_resident_for_every_placement(
    checkpoint: Callable[[str], Path],
    reference: Callable[[str, tuple[int, ...]], np.ndarray], tmp_path: Path,
) -> None:
    ckpt = checkpoint("llama")
    # the smallest window that still streams: the int8 blocks are a quarter of fp32's
    fp32_total = sum(b.nbytes for b in int8_worker(ckpt, tmp_path, None).blocks)
    streaming = int8_worker(ckpt, tmp_path, fp32_total // 4 - 1)
    assert streaming.window is not None
    int8_blocks = streaming.window.blocks
    streaming.close()
    sizes = [b.nbytes for b in int8_blocks]
    ref = reference("llama", IDS)
    results: dict[tuple[int, ...], np.ndarray] = {}
    for window in sweep(max(sizes), fp32_total // 4 - 1):  # below 4-bit's need: streams
        worker = int8_worker(ckpt, tmp_path, window)
        try:
            assert worker.residency is not None and worker.window is not None
            first, second = logits(worker), logits(worker)
            st = worker.stats()
            assert st.peak_loaded_bytes <= window
            assert st.bytes_read <= sum(sizes) * 3  # int8 blocks, not fp32 ones
        finally:
            worker.close()
        np.testing.assert_array_equal(first, second)
        results[worker.residency.resident] = first
        # int8 weights and activations: stated tolerance 10 % of the logits' range
        assert np.abs(first - ref).max() <= 0.1 * np.abs(ref).max()
    placements = list(results)
    for p in placements[1:]:  # the same kernel over the same bytes, wherever they live
        np.testing.assert_array_equal(results[p], results[placements[0]])
    assert len(placements) >= 2 and () in placements


def test_a_window_below_one_int8_block_or_q4_without_streaming_is_refused(
    checkpoint: Callable[[str], Path], tmp_path: Path
) -> None:
    ckpt = checkpoint("llama")
    with pytest.raises(MemoryBudgetError, match="largest block"):
        int8_worker(ckpt, tmp_path, 1000)
    c = Checkpoint(ckpt)
    plan = plan_tensor_parallel(c.config.decoder_shape(CONTEXT), [RelativeSpeed("a", 1.0)],
                                streaming=True, model_digest=c.digest)
    slices = convert_share(c, plan.shares[0], tmp_path)
    with pytest.raises(ConfigError, match="resident"):
        TensorWorker(c.config, slices, plan.shares[0], max_context=CONTEXT,
                     window_budget_bytes=1000, quantize="q4")
