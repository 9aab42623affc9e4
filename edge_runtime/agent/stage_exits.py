"""A pipeline stage's early exit: whether it fires, and what later exits need of it.

Why apart from `stage.py`: a stage that does not answer sends its exit head's outputs
to the coordinator once (a partial result) instead of carrying them along every later
hop. A later exit's *patience* rule still compares its prediction with the earlier
exits' (`ExitRule.previous`); the class each row predicts is all it reads of them, so
that is what travels on: one int64 per row per exit output (`v/<name>`), not the
logits. This module turns outputs into those votes and votes back into logits with
the same predictions, and decides whether an exit fires.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from edge_runtime.errors import InputError
from edge_runtime.protocol import ExitRule

MAX_CLASS = 1 << 24
"""Largest class index a vote may carry: rebuilding logits from it allocates one row of
this many values, so a buggy or hostile peer cannot make a stage allocate more."""


def votes_of(value: np.ndarray) -> np.ndarray | None:
    """The class each row of `value` predicts (int64), or None when `value` is not
    [batch, classes] (or [classes]) float logits, which no exit policy reads."""
    if value.dtype.kind != "f" or value.ndim not in (1, 2) or value.size == 0:
        return None
    if value.shape[-1] < 2:
        return None
    rows = value.reshape(-1, value.shape[-1])
    return np.asarray(rows.argmax(axis=1), dtype=np.int64)


def logits_from_votes(votes: np.ndarray) -> np.ndarray:
    """[batch, classes] logits whose argmax per row is `votes` (one-hot rows): what a
    patience rule compares. InputError for votes that are not class indices."""
    if votes.dtype != np.int64 or votes.ndim != 1 or votes.size == 0:
        raise InputError(f"exit votes must be a non-empty int64 vector, got {votes.dtype}"
                         f"{list(votes.shape)}; the previous stage runs another release")
    low, high = int(votes.min()), int(votes.max())
    if low < 0 or high >= MAX_CLASS:
        raise InputError(f"exit votes hold class {low if low < 0 else high}, outside "
                         f"[0, {MAX_CLASS}); the previous stage runs another release")
    logits = np.zeros((votes.size, max(2, high + 1)), dtype=np.float32)
    logits[np.arange(votes.size), votes] = 1.0
    return logits


def exit_fires(rule: ExitRule, available: Mapping[str, np.ndarray],
               earlier: Mapping[str, np.ndarray], votes: Mapping[str, np.ndarray]) -> bool:
    """True when every sample of the batch may stop here under the exit's policy.

    `earlier`: earlier exits' outputs that are here (logits); `votes`: the predictions
    of those that are not (only a patience rule reads them). A batch leaves at one exit
    together (its tensors travel as one), so one undecided sample keeps it going.
    """
    from partitioner.exit_policies import exit_decision

    previous: list[np.ndarray] = []
    if rule.policy == "patience":
        for name in rule.previous:
            if name in earlier:
                previous.append(earlier[name])
            elif name in votes:
                previous.append(logits_from_votes(votes[name]))
    decision = exit_decision(rule.policy, available[rule.output], rule.threshold,
                             previous=previous)
    return bool(np.asarray(decision).all())


__all__ = ["MAX_CLASS", "exit_fires", "logits_from_votes", "votes_of"]
