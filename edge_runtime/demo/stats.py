"""Pure summaries the demo and the pipeline benchmark report: latency percentiles,
accuracy, which exit answered how often, throughput.

Kept apart from rendering so the numbers can be tested (and reused by
`edge-runtime run` and `bench pipeline`) without formatting in the way.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

FINAL_EXIT = "final"
"""How a result that ran to the model's last stage (`Result.exit is None`) is named."""


@dataclass(frozen=True)
class LatencyStats:
    """Latency percentiles of a set of requests, in seconds."""

    count: int
    mean_s: float
    p50_s: float
    p90_s: float
    p99_s: float
    min_s: float
    max_s: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> LatencyStats:
        """Percentiles by linear interpolation (numpy's default); needs at least one sample."""
        if len(samples) == 0:
            raise ValueError("no latency samples to summarise")
        values = np.asarray(samples, dtype=np.float64)
        p50, p90, p99 = np.percentile(values, [50, 90, 99])
        return cls(
            count=len(values),
            mean_s=float(values.mean()),
            p50_s=float(p50),
            p90_s=float(p90),
            p99_s=float(p99),
            min_s=float(values.min()),
            max_s=float(values.max()),
        )

    def to_dict(self) -> dict[str, float]:
        return {
            "count": self.count,
            "mean_ms": self.mean_s * 1e3,
            "p50_ms": self.p50_s * 1e3,
            "p90_ms": self.p90_s * 1e3,
            "p99_ms": self.p99_s * 1e3,
            "min_ms": self.min_s * 1e3,
            "max_ms": self.max_s * 1e3,
        }


def accuracy(predicted: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Fraction of predictions equal to their label."""
    pred, true = np.asarray(predicted), np.asarray(labels)
    if pred.shape != true.shape or pred.size == 0:
        raise ValueError(
            f"need equally many predictions and labels, got {pred.shape} and {true.shape}"
        )
    return float(np.mean(pred == true))


def exit_name(exit: str | None) -> str:
    """The exit that answered, naming a run to the end `final`."""
    return FINAL_EXIT if exit is None else exit


def exit_counts(exits: Iterable[str | None], order: Sequence[str] = ()) -> dict[str, int]:
    """How many requests each exit answered, in `order` first (zeros kept), then others."""
    counts: dict[str, int] = {name: 0 for name in order}
    for exit in exits:
        name = exit_name(exit)
        counts[name] = counts.get(name, 0) + 1
    return counts


def throughput(count: int, elapsed_s: float) -> float:
    """Requests per second."""
    if elapsed_s <= 0:
        raise ValueError(f"elapsed time must be positive, got {elapsed_s}")
    return count / elapsed_s


__all__ = ["FINAL_EXIT", "LatencyStats", "accuracy", "exit_counts", "exit_name", "throughput"]
