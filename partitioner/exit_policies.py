"""Exit policies: when may a request stop at an early exit, judged from its logits.

Pure and vectorised over a batch: each function takes logits of shape [batch, classes]
and returns one value (or decision) per row. The policies are the ones the early-exit
literature settled on: max softmax probability and top-1/top-2 margin (CALM),
entropy (BranchyNet, DeeBERT) and patience — the same answer at k consecutive exits
(PABEE).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from partitioner.errors import PartitionError

log = logging.getLogger(__name__)

POLICIES = ("max_prob", "entropy", "margin", "patience")


def _check(logits: np.ndarray) -> np.ndarray:
    array = np.asarray(logits, dtype=np.float64)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] < 2:
        raise PartitionError(
            f"exit logits must have shape [batch, classes] with >= 2 classes, got {array.shape}; "
            "flatten the exit head's output first"
        )
    return array


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    array = _check(logits)
    shifted = array - array.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    result: np.ndarray = exp / exp.sum(axis=1, keepdims=True)
    return result


def exit_scores(policy: str, logits: np.ndarray) -> np.ndarray:
    """The score a threshold is compared with: max prob, entropy (nats) or top-1 − top-2 margin."""
    probs = softmax(logits)
    if policy == "max_prob":
        return np.asarray(probs.max(axis=1))
    if policy == "margin":
        top2 = np.sort(probs, axis=1)[:, -2:]
        return np.asarray(top2[:, 1] - top2[:, 0])
    if policy == "entropy":
        return np.asarray(-(probs * np.log(np.clip(probs, 1e-30, None))).sum(axis=1))
    raise PartitionError(f"no score for exit policy {policy!r}; use one of {POLICIES[:3]}")


def exit_decision(
    policy: str,
    logits: np.ndarray,
    threshold: float | None,
    *,
    previous: Sequence[np.ndarray] = (),
) -> np.ndarray:
    """Which rows of `logits` may stop at this exit (a bool array of the batch size).

    max_prob / margin: score >= threshold. entropy: entropy <= threshold.
    patience: `threshold` is k; stop when this exit and the k − 1 exits before it
    (`previous`, their logits in network order) predict the same class.
    A threshold of None never stops (an uncalibrated exit).
    """
    array = _check(logits)
    if threshold is None:
        return np.zeros(len(array), dtype=bool)
    if policy == "patience":
        k = int(threshold)
        if k < 1:
            raise PartitionError(f"patience must be >= 1 exits, got {threshold}")
        if len(previous) < k - 1:
            return np.zeros(len(array), dtype=bool)
        top = array.argmax(axis=1)
        agree = np.ones(len(array), dtype=bool)
        for earlier in list(previous)[len(previous) - (k - 1) :] if k > 1 else []:
            agree &= _check(earlier).argmax(axis=1) == top
        return agree
    return fires(policy, exit_scores(policy, array), threshold)


def fires(policy: str, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Which scores stop at the exit: entropy at or below the threshold, any other
    score (max prob, margin, a patience streak) at or above it."""
    if policy == "entropy":
        return scores <= threshold
    return scores >= threshold


def first_exits(
    policy: str, exit_logits: Sequence[np.ndarray], thresholds: Sequence[float | None]
) -> np.ndarray:
    """For every row, the index of the first exit that fires (the last exit always does).

    `exit_logits` holds one [batch, classes] array per exit in network order (the final
    one last); `thresholds` one per early exit (len(exit_logits) − 1).
    """
    if len(thresholds) != len(exit_logits) - 1:
        raise PartitionError(
            f"{len(thresholds)} thresholds for {len(exit_logits)} exits: give one per early exit"
        )
    batch = len(_check(exit_logits[0]))
    chosen = np.full(batch, len(exit_logits) - 1, dtype=np.int64)
    undecided = np.ones(batch, dtype=bool)
    for i, threshold in enumerate(thresholds):
        fire = (
            exit_decision(policy, exit_logits[i], threshold, previous=exit_logits[:i]) & undecided
        )
        chosen[fire] = i
        undecided &= ~fire
    return chosen
