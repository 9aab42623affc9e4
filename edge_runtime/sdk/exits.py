"""Exit thresholds and rules of a plan, shared by deploying and by re-tuning a deployment.

Why its own module: `deploy.py` writes the rules into the stage specs and
`Deployment.set_exit_thresholds` rewrites them while deployed; both import this,
so neither imports the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edge_runtime.errors import ConfigError
from edge_runtime.protocol import ExitRule


def exit_thresholds(plan: Any, exits: Any,
                    policy: str = "max_prob") -> dict[str, tuple[str, float | None]]:
    """Exit name -> (policy, threshold): the plan's, overridden by an `exits` mapping
    (`{name: threshold}` or `{name: (policy, threshold)}`; None: never stop there)."""
    thresholds: dict[str, tuple[str, float | None]] = {}
    for spec in plan.exits:
        thresholds[spec.name] = (spec.policy, spec.threshold)
    if isinstance(exits, Mapping):
        unknown = sorted(set(exits) - set(thresholds))
        if unknown:
            raise ConfigError(
                f"exits {unknown} are not exit heads of this plan (known: {sorted(thresholds)})"
            )
        for name, value in exits.items():
            if isinstance(value, tuple):
                thresholds[name] = (str(value[0]), float(value[1]))
            else:
                thresholds[name] = (policy, None if value is None else float(value))
    return thresholds


def exit_rules(plan: Any, exits: Any, policy: str = "max_prob") -> dict[str, ExitRule]:
    """Exit name -> rule for exits that may fire (a threshold and not the final one)."""
    thresholds = exit_thresholds(plan, exits, policy)
    rules: dict[str, ExitRule] = {}
    earlier: list[str] = []
    for spec in plan.exits:
        chosen_policy, threshold = thresholds[spec.name]
        if not spec.final and threshold is not None:
            rules[spec.name] = ExitRule(spec.name, spec.output, chosen_policy,
                                          float(threshold), tuple(earlier))
        earlier.append(spec.output)
    return rules


__all__ = ["exit_rules", "exit_thresholds"]
