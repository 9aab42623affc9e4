"""What an exit's outputs become on later hops: one predicted class per row, from which
a patience rule decides exactly as it would from the logits."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.agent.stage_exits import MAX_CLASS, exit_fires, logits_from_votes, votes_of
from edge_runtime.errors import InputError
from edge_runtime.protocol import ExitRule


def test_votes_are_the_argmax_and_rebuild_logits_with_the_same_argmax() -> None:
    logits = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
    votes = votes_of(logits)
    assert votes is not None and votes.dtype == np.int64
    np.testing.assert_array_equal(votes, logits.argmax(axis=1))
    np.testing.assert_array_equal(logits_from_votes(votes).argmax(axis=1), votes)
    np.testing.assert_array_equal(votes_of(logits[0]), [logits[0].argmax()])  # one row


@pytest.mark.parametrize("value", [np.zeros((3, 1), np.float32), np.zeros((2, 3, 4), np.float32),
                                   np.zeros((3, 4), np.int64), np.zeros((0, 4), np.float32)])
def test_outputs_that_are_not_logits_cast_no_votes(value: np.ndarray) -> None:
    assert votes_of(value) is None


@pytest.mark.parametrize("votes", [np.array([-1], np.int64), np.array([MAX_CLASS], np.int64),
                                   np.array([1.0]), np.zeros((2, 2), np.int64)])
def test_votes_that_are_not_class_indices_are_refused(votes: np.ndarray) -> None:
    with pytest.raises(InputError):
        logits_from_votes(votes)


def test_patience_decides_the_same_from_votes_as_from_logits() -> None:
    rng = np.random.default_rng(1)
    rule = ExitRule("exit2", "exit2", "patience", 2.0, ("exit1",))
    seen = set()
    for _ in range(40):
        exit1, exit2 = rng.standard_normal((2, 1, 3)).astype(np.float32)
        from_logits = exit_fires(rule, {"exit2": exit2}, {"exit1": exit1}, {})
        from_votes = exit_fires(rule, {"exit2": exit2}, {}, {"exit1": votes_of(exit1)})
        assert from_votes == from_logits == bool(exit1.argmax() == exit2.argmax())
        seen.add(from_votes)
    assert seen == {True, False}
