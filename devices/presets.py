"""Named reference profiles of typical edge devices, with a source for every figure.

Presets let a planner be tried against a cluster nobody has on their desk, and let
a local cluster emulate one (`devices.caps`). The figures live in `presets.json`
next to this module, each with the published specification, measurement or
derivation it came from, so a reader can check or replace any of them.
"""

from __future__ import annotations

import functools
import json
import logging
from importlib import resources
from typing import Any

from devices.errors import UnknownPresetError
from devices.profile import DeviceProfile

log = logging.getLogger(__name__)

#: Execution backends a preset device is assumed to have (the runtime's own wheels).
DEFAULT_BACKENDS = ("onnxruntime:CPUExecutionProvider", "litert")
_FIELDS = (
    "arch",
    "os",
    "cores",
    "freq_mhz",
    "gflops_fp32",
    "gflops_int8",
    "mem_total_bytes",
    "mem_available_bytes",
    "mem_bandwidth_gbps",
    "disk_read_gbps",
)


@functools.cache
def _table() -> dict[str, dict[str, Any]]:
    text = resources.files("devices").joinpath("presets.json").read_text()
    data: dict[str, dict[str, Any]] = json.loads(text)
    return {name: entry for name, entry in data.items() if not name.startswith("_")}


def _normalise(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(" ", "-")


@functools.cache
def _aliases() -> dict[str, str]:
    table: dict[str, str] = {}
    for name, entry in _table().items():
        table[name] = name
        for alias in entry.get("aliases", []):
            table[_normalise(alias)] = name
    return table


def names() -> list[str]:
    """The canonical preset names, sorted."""
    return sorted(_table())


def aliases() -> dict[str, str]:
    """alias -> canonical name (canonical names map to themselves)."""
    return dict(_aliases())


def resolve(name: str) -> str:
    """The canonical name of `name` or an alias ("pi4" -> "raspberry-pi-4")."""
    canonical = _aliases().get(_normalise(name))
    if canonical is None:
        raise UnknownPresetError(
            f"unknown device preset {name!r}; choose one of: {', '.join(names())} "
            f"(aliases: {', '.join(sorted(a for a, c in _aliases().items() if a != c))})"
        )
    return canonical


def get(name: str) -> DeviceProfile:
    """The reference profile of a preset (`source="preset"`); raises UnknownPresetError."""
    canonical = resolve(name)
    entry = _table()[canonical]
    values = {field: entry[field]["value"] for field in _FIELDS}
    return DeviceProfile(
        name=canonical,
        backends=tuple(entry.get("backends", DEFAULT_BACKENDS)),
        source="preset",
        disk_read_method="published",
        compute_engine="published",
        **values,
    )


def sources(name: str) -> dict[str, str]:
    """field -> where its figure comes from, for the preset `name`."""
    entry = _table()[resolve(name)]
    return {field: str(entry[field]["source"]) for field in _FIELDS}


def notes(name: str) -> str:
    """One line describing exactly which device the preset stands for."""
    return str(_table()[resolve(name)].get("notes", ""))
