"""Predicted vs measured time per stage or device, with their ratio.

Why: the planner's predictions decide every split; printing them next to what the
run measured after each `run` or `generate` shows at once where the cost model is off
(a ratio far from 1) and on which device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Comparison:
    """One stage's or device's predicted and measured seconds."""

    name: str
    predicted_s: float
    measured_s: float

    @property
    def ratio(self) -> float:
        """measured / predicted (0 when nothing was predicted)."""
        return self.measured_s / self.predicted_s if self.predicted_s > 0 else 0.0


def stage_rows(devices: Sequence[str], predicted_s: Sequence[float],
               measured_s: Sequence[float]) -> list[Comparison]:
    """Per pipeline stage: the plan's compute+transfer vs the stage's measured ones
    (stages an early exit skipped are left out: they did not run)."""
    return [Comparison(f"stage {i} ({device})", p, m)
            for i, (device, p, m) in enumerate(zip(devices, predicted_s, measured_s,
                                                   strict=False))]


def format_rows(rows: Sequence[Comparison], unit: str = "ms") -> list[str]:
    """Aligned lines: name, predicted, measured, measured/predicted."""
    if not rows:
        return []
    width = max(len(r.name) for r in rows)
    scale = 1e3 if unit == "ms" else 1.0
    lines = [f"  {'':<{width}}  {'predicted':>10}  {'measured':>10}  ratio"]
    for r in rows:
        ratio = f"{r.ratio:.2f}" if r.predicted_s > 0 else "-"
        lines.append(f"  {r.name:<{width}}  {r.predicted_s * scale:>7.2f} {unit}  "
                     f"{r.measured_s * scale:>7.2f} {unit}  {ratio}")
    return lines


__all__ = ["Comparison", "format_rows", "stage_rows"]
