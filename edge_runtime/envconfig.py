"""Environment overrides for the timeout objects of the agent and the coordinator.

Why: a timeout that is right on a wired LAN is wrong on a Pi over flaky Wi-Fi, and the
person who learns that is often not the one who wrote the app. Each side has one
frozen config dataclass (`agent.config.AgentTimeouts`, `sdk.config.Timeouts`); every
numeric field can be overridden with an environment variable named PREFIX + FIELD in
upper case, e.g. ``EDGE_RUNTIME_HEARTBEAT_TIMEOUT_S=10``. A malformed value is a
`ConfigError` naming the variable, never a silent default.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any, TypeVar

from edge_runtime.errors import ConfigError

T = TypeVar("T")


def env_name(prefix: str, field_name: str) -> str:
    """The environment variable that overrides `field_name`."""
    return f"{prefix}{field_name.upper()}"


def _parse(name: str, text: str, current: Any) -> Any:
    try:
        if isinstance(current, bool):
            lowered = text.strip().lower()
            if lowered not in {"1", "0", "true", "false", "yes", "no"}:
                raise ValueError(text)
            return lowered in {"1", "true", "yes"}
        if isinstance(current, int):
            value: float = int(text)
        else:
            value = float(text)
    except ValueError:
        raise ConfigError(f"environment variable {name}={text!r} is not a "
                          f"{type(current).__name__}") from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"environment variable {name}={text!r} must be finite and ≥ 0")
    return value


def with_env_overrides(config: T, prefix: str, environ: Mapping[str, str] | None = None) -> T:
    """`config` (a dataclass instance) with each numeric or boolean field replaced by
    its environment variable, where set."""
    env = os.environ if environ is None else environ
    changes: dict[str, Any] = {}
    for field in dataclasses.fields(config):  # type: ignore[arg-type]
        current = getattr(config, field.name)
        if not isinstance(current, int | float | bool):
            continue
        name = env_name(prefix, field.name)
        if name in env:
            changes[field.name] = _parse(name, env[name], current)
    return dataclasses.replace(config, **changes) if changes else config  # type: ignore[type-var]


__all__ = ["env_name", "with_env_overrides"]
