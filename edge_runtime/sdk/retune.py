"""Changing a deployment's early-exit thresholds while it is deployed.

Only the rule changes, not the shard: the agents holding the changed exits' stages
are sent one `set_exit` message each, and the plan and stage specs are rewritten to
match (so a later failover places the model with the new thresholds).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edge_runtime.errors import ConfigError
from edge_runtime.protocol import SetExit, SetExitReply, StageSpec
from edge_runtime.sdk.agents import Agents
from edge_runtime.sdk.exits import exit_rules, exit_thresholds

log = logging.getLogger(__name__)


def _number(value: Any, exit_name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"exit {exit_name!r}: threshold {value!r} is not a number") from None


def wanted_thresholds(plan: Any, thresholds: Mapping[str, Any]) -> dict[str, Any]:
    """Exit name -> (policy, threshold) or None, checked against the plan's exits."""
    from partitioner.exit_policies import POLICIES

    current = {e.name: e for e in plan.exits}
    earlier = sorted(name for name, e in current.items() if not e.final)
    wanted: dict[str, Any] = {}
    for name, value in thresholds.items():
        spec = current.get(name)
        if spec is None or spec.final:
            why = "is the final exit, which always answers" if spec else "is not an exit"
            raise ConfigError(f"{name!r} {why} of this deployment; set thresholds on "
                              f"{earlier or 'its early exits (it has none)'}")
        if value is None:
            wanted[name] = None
            continue
        if isinstance(value, tuple) and len(value) != 2:
            raise ConfigError(f"exit {name!r}: give a threshold or (policy, threshold)")
        policy, threshold = value if isinstance(value, tuple) else (spec.policy, value)
        if policy not in POLICIES or not np.isfinite(_number(threshold, name)):
            raise ConfigError(f"exit {name!r}: need a finite threshold and a policy of "
                              f"{POLICIES}, got ({policy!r}, {threshold!r})")
        wanted[name] = (str(policy), float(threshold))
    return wanted


def retune_exits(cluster: Agents, deployment_id: str, plan: Any, specs: Sequence[StageSpec],
                 thresholds: Mapping[str, Any]) -> tuple[Any, tuple[StageSpec, ...]]:
    """Send the new rules to the agents concerned; returns the rewritten plan and specs."""
    wanted = wanted_thresholds(plan, thresholds)
    chosen = exit_thresholds(plan, wanted)
    new_plan = dataclasses.replace(plan, exits=tuple(
        dataclasses.replace(e, policy=chosen[e.name][0], threshold=chosen[e.name][1])
        for e in plan.exits))
    rules = exit_rules(new_plan, None)
    new_specs = list(specs)
    for index, (spec, stage) in enumerate(zip(specs, plan.stages, strict=True)):
        if stage.exit not in wanted:
            continue
        rule = rules.get(stage.exit)
        cluster.call(stage.device, SetExit(spec.deployment_id, rule), SetExitReply)
        new_specs[index] = dataclasses.replace(spec, exit=rule)
        log.info("%s: exit %s of stage %d on %s now %s", deployment_id, stage.exit, index,
                 stage.device, "off" if rule is None else f"{rule.policy} {rule.threshold:g}")
    return new_plan, tuple(new_specs)


__all__ = ["retune_exits", "wanted_thresholds"]
