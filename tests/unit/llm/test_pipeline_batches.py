"""Cutting a step into micro-batches and putting the logits back in item order."""

from __future__ import annotations

import numpy as np

from edge_runtime.llm.engine import BatchItem
from edge_runtime.llm.pipeline_batches import Piece, assemble, micro_batches


def fake_logits(pieces: list[Piece], last_only: bool) -> np.ndarray:
    """Rows that name (slot, position) of the token they belong to."""
    rows = []
    for p in pieces:
        ids = p.batch.token_ids
        positions = range(p.batch.start, p.batch.start + len(ids))
        chosen = [list(positions)[-1]] if last_only else list(positions)
        rows += [[p.batch.slot, pos] for pos in chosen]
    return np.array(rows, dtype=np.float32)


def test_sequences_are_grouped_whole_and_balanced_by_tokens() -> None:
    items = [BatchItem(s, tuple(range(n)), 0) for s, n in enumerate([5, 1, 1, 1, 4, 1])]
    batches = micro_batches(items, 3)
    assert len(batches) == 3
    assert sorted(p.item for b in batches for p in b) == list(range(6))
    loads = sorted(sum(len(p.batch.token_ids) for p in b) for b in batches)
    assert loads == [4, 4, 5]
    assert all(p.final for b in batches for p in b)
    for last_only in (True, False):
        out = assemble(len(items), batches, [fake_logits(b, last_only) for b in batches],
                       last_only)
        want = [[s, n - 1] for s, n in enumerate([5, 1, 1, 1, 4, 1])] if last_only else [
            [s, pos] for s, n in enumerate([5, 1, 1, 1, 4, 1]) for pos in range(n)]
        np.testing.assert_array_equal(out, want)


def test_a_long_prompt_is_cut_into_chunks_that_follow_each_other() -> None:
    items = [BatchItem(0, tuple(range(10)), 3), BatchItem(1, (7,), 9)]
    batches = micro_batches(items, 4)
    # two chunks of the prompt; the one-token sequence only in the first micro-batch
    assert [[(p.item, p.batch.start, len(p.batch.token_ids)) for p in b] for b in batches] == [
        [(0, 3, 5), (1, 9, 1)], [(0, 8, 5)]]
    assert [[p.final for p in b] for b in batches] == [[False, True], [True]]
    out = assemble(2, batches, [fake_logits(b, True) for b in batches], True)
    np.testing.assert_array_equal(out, [[0, 12], [1, 9]])
    every = assemble(2, batches, [fake_logits(b, False) for b in batches], False)
    np.testing.assert_array_equal(every, [[0, p] for p in range(3, 13)] + [[1, 9]])


def test_one_micro_batch_is_the_step_itself() -> None:
    items = [BatchItem(2, (1, 2), 0), BatchItem(0, (3,), 5)]
    (only,) = micro_batches(items, 1)
    assert [p.batch for p in only] == items
