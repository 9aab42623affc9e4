"""Early exits under a plan: calibrating thresholds, and joint planning under an SLO.

Why calibrate against the plan: an exit saves the time of every stage after it, so
the value of a threshold depends on where the plan's stage boundaries fall and how
fast each device is. `calibrate_exits` therefore scores threshold choices by
expected latency under the plan's predicted stage times, and keeps accuracy within
a tolerance of the final exit's. `plan_with_slo` (as in Edgent) goes one step
further: it tries the model truncated at each exit, plans each, and picks cut points
and thresholds together to maximise accuracy with expected latency ≤ the SLO.

The threshold search is exhaustive over a per-exit grid (quantiles of each exit's
score on the calibration set) when the grid product is small (≤ `EXHAUSTIVE_LIMIT`
combinations), else coordinate descent from "never exit".
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from partitioner.cost import DEFAULT_COST_MODEL, CostModel
from partitioner.errors import InfeasiblePlanError, PartitionError
from partitioner.exit_policies import POLICIES, exit_decision, exit_scores, fires, first_exits
from partitioner.graph import ModelGraph
from partitioner.pipeline import LinkInput, plan_pipeline
from partitioner.plan import Plan

log = logging.getLogger(__name__)

EXHAUSTIVE_LIMIT = 20_000
GRID_POINTS = 24

__all__ = [
    "Calibration",
    "CurvePoint",
    "apply_calibration",
    "calibrate_exits",
    "exit_decision",
    "exit_latencies",
    "plan_with_slo",
    "simulate_exits",
]


@dataclass(frozen=True)
class CurvePoint:
    """One threshold choice: its accuracy, expected latency and share of rows per exit."""

    thresholds: tuple[float | None, ...]
    accuracy: float
    expected_latency_s: float
    exit_rates: tuple[float, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "thresholds": list(self.thresholds),
            "accuracy": self.accuracy,
            "expected_latency_s": self.expected_latency_s,
            "exit_rates": list(self.exit_rates),
        }


@dataclass(frozen=True)
class Calibration:
    """The chosen thresholds and the accuracy/latency curve they were chosen from."""

    policy: str
    chosen: CurvePoint
    final_accuracy: float
    exit_accuracies: tuple[float, ...]  # each exit alone, on the calibration set
    curve: tuple[CurvePoint, ...]  # Pareto front: expected latency ascending


def exit_latencies(plan: Plan) -> list[float]:
    """Predicted time from the request's arrival to each exit's answer (per plan exit)."""
    elapsed, at_stage = 0.0, []
    for stage in plan.stages:
        elapsed += stage.predicted_compute_s
        at_stage.append(elapsed)
        elapsed += stage.predicted_transfer_s
    return [at_stage[e.stage_index] for e in plan.exits]


def simulate_exits(
    policy: str,
    exit_logits: Sequence[np.ndarray],
    labels: np.ndarray,
    thresholds: Sequence[float | None],
    latencies: Sequence[float],
) -> CurvePoint:
    """Accuracy and expected latency of one threshold choice on a labelled set."""
    chosen = first_exits(policy, exit_logits, thresholds)
    predictions = np.stack([np.asarray(x).argmax(axis=1) for x in exit_logits])
    answer = predictions[chosen, np.arange(len(chosen))]
    rates = np.bincount(chosen, minlength=len(exit_logits)) / max(len(chosen), 1)
    return CurvePoint(
        thresholds=tuple(None if t is None else float(t) for t in thresholds),
        accuracy=float((answer == labels).mean()),
        expected_latency_s=float(np.asarray(latencies)[chosen].mean()),
        exit_rates=tuple(float(r) for r in rates),
    )


class _Evaluator:
    """`simulate_exits` with every exit's scores and correctness computed once.

    A threshold search evaluates hundreds of choices on the same logits, so softmax
    and argmax run once here and each choice costs a few comparisons per exit.
    """

    def __init__(
        self,
        policy: str,
        exit_logits: Sequence[np.ndarray],
        labels: np.ndarray,
        latencies: Sequence[float],
    ) -> None:
        self.policy = policy
        self.latencies = np.asarray(latencies, dtype=np.float64)
        predictions = np.stack([np.asarray(x).argmax(axis=1) for x in exit_logits])
        self.correct = predictions == labels[None, :]
        self.count = len(exit_logits)
        if policy == "patience":
            # streak[i]: how many consecutive exits up to i agree with exit i's answer
            streak = np.ones_like(predictions)
            for i in range(1, self.count):
                same = predictions[i] == predictions[i - 1]
                streak[i] = np.where(same, streak[i - 1] + 1, 1)
            self.scores = streak.astype(np.float64)
        else:
            self.scores = np.stack([exit_scores(policy, x) for x in exit_logits])

    def __call__(self, thresholds: Sequence[float | None]) -> CurvePoint:
        rows = self.scores.shape[1]
        chosen = np.full(rows, self.count - 1, dtype=np.int64)
        undecided = np.ones(rows, dtype=bool)
        for i, threshold in enumerate(thresholds):
            if threshold is None:
                continue
            fire = fires(self.policy, self.scores[i], threshold) & undecided
            chosen[fire] = i
            undecided &= ~fire
        rates = np.bincount(chosen, minlength=self.count) / max(rows, 1)
        return CurvePoint(
            thresholds=tuple(None if t is None else float(t) for t in thresholds),
            accuracy=float(self.correct[chosen, np.arange(rows)].mean()),
            expected_latency_s=float(self.latencies[chosen].mean()),
            exit_rates=tuple(float(r) for r in rates),
        )


def _grid(policy: str, logits: np.ndarray, exits: int) -> list[float | None]:
    """Candidate thresholds of one exit, strictest (None = never) included."""
    if policy == "patience":
        return [None, *[float(k) for k in range(2, exits + 1)]]
    scores = exit_scores(policy, logits)
    quantiles = np.unique(np.quantile(scores, np.linspace(0.0, 1.0, GRID_POINTS)))
    if policy == "entropy":  # lower entropy = more confident; nudge so ties exit
        return [None, *[float(q) + 1e-12 for q in quantiles]]
    return [None, *[float(q) - 1e-12 for q in quantiles]]


def _pareto(points: Sequence[CurvePoint]) -> tuple[CurvePoint, ...]:
    front: list[CurvePoint] = []
    for point in sorted(points, key=lambda p: (p.expected_latency_s, -p.accuracy)):
        if not front or point.accuracy > front[-1].accuracy:
            front.append(point)
    return tuple(front)


def _search(
    policy: str,
    exit_logits: Sequence[np.ndarray],
    labels: np.ndarray,
    latencies: Sequence[float],
) -> list[CurvePoint]:
    evaluate = _Evaluator(policy, exit_logits, labels, latencies)
    grids = [_grid(policy, x, len(exit_logits)) for x in exit_logits[:-1]]
    if not grids:
        return [evaluate([])]
    if policy == "patience":  # one k for every exit: the PABEE rule
        return [evaluate([k] * len(grids)) for k in grids[0]]
    combos = int(np.prod([len(g) for g in grids]))
    if combos <= EXHAUSTIVE_LIMIT:
        return [evaluate(list(t)) for t in itertools.product(*grids)]
    # coordinate descent over exits, recording every point visited
    current: list[float | None] = [None] * len(grids)
    points = [evaluate(current)]
    for _ in range(3):
        for i, grid in enumerate(grids):
            trial = [evaluate([*current[:i], t, *current[i + 1 :]]) for t in grid]
            points.extend(trial)
            best = min(trial, key=lambda p: (-p.accuracy, p.expected_latency_s))
            current = list(best.thresholds)
    return points


def calibrate_exits(
    exit_logits: Sequence[np.ndarray],
    labels: np.ndarray,
    latencies: Sequence[float],
    *,
    policy: str = "max_prob",
    tolerance: float = 0.01,
) -> Calibration:
    """Thresholds minimising expected latency with accuracy ≥ final accuracy − tolerance.

    `exit_logits`: one [n, classes] array per exit in network order (final last),
    computed on a labelled calibration set; `latencies`: the time to each exit's
    answer (`exit_latencies(plan)`). Returns the choice and the Pareto curve.
    """
    labels = np.asarray(labels).reshape(-1)
    _validate(policy, exit_logits, labels, latencies)
    points = _search(policy, exit_logits, labels, latencies)
    predictions = [np.asarray(x).argmax(axis=1) for x in exit_logits]
    accuracies = tuple(float((p == labels).mean()) for p in predictions)
    final = accuracies[-1]
    allowed = [p for p in points if p.accuracy >= final - tolerance - 1e-12]
    chosen = min(allowed, key=lambda p: (p.expected_latency_s, -p.accuracy))
    log.info(
        "calibrated %s exits: accuracy %.4f (final %.4f), expected latency %.3g s",
        policy,
        chosen.accuracy,
        final,
        chosen.expected_latency_s,
    )
    return Calibration(policy, chosen, final, accuracies, _pareto(points))


def _validate(
    policy: str, exit_logits: Sequence[np.ndarray], labels: np.ndarray, latencies: Sequence[float]
) -> None:
    if policy not in POLICIES:
        raise PartitionError(f"unknown exit policy {policy!r}; use one of {POLICIES}")
    if not exit_logits:
        raise PartitionError("no exit logits given; pass one array per exit (final last)")
    if len(latencies) != len(exit_logits):
        raise PartitionError(
            f"{len(latencies)} latencies for {len(exit_logits)} exits: the plan's exits and the "
            "logits must correspond (same exits, same order)"
        )
    for logits in exit_logits:
        if len(logits) != len(labels):
            raise PartitionError(
                f"calibration set has {len(labels)} labels but an exit has {len(logits)} rows"
            )


def apply_calibration(plan: Plan, calibration: Calibration) -> Plan:
    """The plan with each exit's policy, threshold and accuracy filled in, plus the curve."""
    if len(calibration.chosen.thresholds) != len(plan.exits) - 1:
        raise PartitionError("the calibration was made for a different number of exits")
    exits = []
    for i, spec in enumerate(plan.exits):
        threshold = calibration.chosen.thresholds[i] if i < len(plan.exits) - 1 else None
        exits.append(
            replace(
                spec,
                policy=calibration.policy,
                threshold=threshold,
                patience=int(threshold)
                if calibration.policy == "patience" and threshold
                else spec.patience,
                accuracy=calibration.exit_accuracies[i],
            )
        )
    extra = dict(plan.extra)
    extra["calibration"] = {
        "policy": calibration.policy,
        "accuracy": calibration.chosen.accuracy,
        "final_accuracy": calibration.final_accuracy,
        "exit_rates": list(calibration.chosen.exit_rates),
        "curve": [p.to_json() for p in calibration.curve],
    }
    return replace(
        plan,
        exits=tuple(exits),
        expected_latency_s=calibration.chosen.expected_latency_s,
        extra=extra,
    )


def plan_with_slo(
    graph: ModelGraph,
    devices: Sequence[Any],
    links: LinkInput,
    exit_logits: Sequence[np.ndarray],
    labels: np.ndarray,
    slo_s: float,
    *,
    policy: str = "max_prob",
    memory_budgets: Sequence[int | None] | None = None,
    cost_model: CostModel = DEFAULT_COST_MODEL,
) -> Plan:
    """Cut points and exit thresholds chosen together: max accuracy, expected latency ≤ SLO.

    `exit_logits` are the graph's exits (`graph.exits`, final last) on a labelled set.
    For every exit L, plan the model truncated at L (latency objective), then pick
    thresholds for the exits before L maximising accuracy under the SLO; the best
    candidate wins (ties: lower expected latency). `InfeasiblePlanError` names the
    fastest expected latency reachable when even that misses the SLO.
    """
    labels = np.asarray(labels).reshape(-1)
    heads = list(graph.exits)
    if not heads:
        raise PartitionError(
            f"{graph.name} has no exit heads; plan_with_slo needs outputs named like 'exit1'"
        )
    _validate(policy, exit_logits, labels, [0.0] * len(heads))
    best: tuple[float, float, Plan] | None = None
    fastest = float("inf")
    for last in range(len(heads)):
        chosen = heads[: last + 1]
        try:
            plan = plan_pipeline(
                graph,
                devices,
                links,
                objective="latency",
                memory_budgets=memory_budgets,
                exits=[h.name for h in chosen],
                cost_model=cost_model,
                end=chosen[-1].position,
            )
        except InfeasiblePlanError:
            continue
        logits = [exit_logits[heads.index(h)] for h in chosen]
        latencies = exit_latencies(plan)
        points = _search(policy, logits, labels, latencies)
        fastest = min(fastest, *(p.expected_latency_s for p in points))
        feasible = [p for p in points if p.expected_latency_s <= slo_s]
        if not feasible:
            continue
        point = max(feasible, key=lambda p: (p.accuracy, -p.expected_latency_s))
        accuracies = tuple(float((np.asarray(x).argmax(1) == labels).mean()) for x in logits)
        calibration = Calibration(policy, point, accuracies[-1], accuracies, _pareto(points))
        candidate = apply_calibration(plan, calibration)
        candidate = replace(candidate, extra={**candidate.extra, "slo_s": slo_s})
        key = (point.accuracy, -point.expected_latency_s)
        if best is None or key > (best[0], best[1]):
            best = (key[0], key[1], candidate)
    if best is None:
        raise InfeasiblePlanError(
            f"no plan meets the SLO of {slo_s * 1e3:.2f} ms: the fastest expected latency on "
            f"these devices is {fastest * 1e3:.2f} ms; relax the SLO or add faster devices"
        )
    return best[2]
