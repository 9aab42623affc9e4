"""`DeviceProfile`: the measured facts of one device, as a typed JSON record.

The planner weighs devices by these numbers, agents report them in their hello,
and the profile cache stores them, so the record must round-trip exactly through
JSON (floats survive `json` unchanged: Python writes the shortest repr that reads
back to the same double). Units: bytes, seconds, GFLOPS (1e9 flop/s), GB/s (1e9 B/s).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from typing import Any

from devices.errors import ProfileFormatError

log = logging.getLogger(__name__)

#: Bumped when a field changes meaning; a cache file of another version is re-measured.
PROFILE_VERSION = 1


@dataclass(frozen=True)
class DeviceProfile:
    """What one device can do, measured on it (or a preset's published figures).

    `gflops_*` are sustained matmul throughputs through the engine that runs the
    work (onnxruntime; `compute_engine` says if numpy stood in), using all `cores`.
    `mem_*` honour cgroup limits. `decode_gbps` is the rate at which a numpy
    matrix-vector product streams fp32 weights — what an LLM decode step achieves, often
    half of `mem_bandwidth_gbps` (a bare read); 0 where unmeasured (older profiles,
    presets), and the cost model then assumes a typical fraction. `host_decode_gbps`:
    the same on every core at once, each its own matrix — what agents sharing this
    machine stream together. `disk_read_gbps` is a sequential read of the
    cache directory that bypasses the page cache; `disk_read_method` says how
    ("O_DIRECT", "fadvise" or "unmeasured").
    """

    name: str
    arch: str
    os: str
    cores: int
    freq_mhz: float
    gflops_fp32: float
    gflops_int8: float
    mem_total_bytes: int
    mem_available_bytes: int
    mem_bandwidth_gbps: float
    disk_read_gbps: float
    backends: tuple[str, ...]
    battery_percent: float | None = None
    temperature_c: float | None = None
    emulated_preset: str | None = None
    measured_at: float = 0.0
    profile_seconds: float = 0.0
    disk_read_method: str = "unmeasured"
    compute_engine: str = "onnxruntime"
    source: str = "measured"  # "measured", "preset" or "emulated"
    decode_gbps: float = 0.0
    host_decode_gbps: float = 0.0

    def __post_init__(self) -> None:
        for name in ("gflops_fp32", "gflops_int8", "mem_bandwidth_gbps", "disk_read_gbps",
                     "decode_gbps", "host_decode_gbps"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ProfileFormatError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.cores < 1:
            raise ProfileFormatError(f"cores must be >= 1, got {self.cores}")
        if self.mem_total_bytes < 0 or self.mem_available_bytes < 0:
            raise ProfileFormatError("memory sizes must be >= 0")

    def label(self) -> str:
        """A display name that never hides emulation: "raspberry-pi-4 (emulated)"."""
        if self.emulated_preset is not None:
            return f"{self.emulated_preset} (emulated)"
        if self.source == "preset":
            return f"{self.name} (preset)"
        return self.name

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists), with the format version."""
        data = dataclasses.asdict(self)
        data["backends"] = list(self.backends)
        data["version"] = PROFILE_VERSION
        return data

    @classmethod
    def from_dict(cls, data: Any) -> DeviceProfile:
        """Inverse of `to_dict`; raises `ProfileFormatError` naming the bad field."""
        if not isinstance(data, dict):
            raise ProfileFormatError(f"a profile must be a JSON object, got {type(data).__name__}")
        version = data.get("version", PROFILE_VERSION)
        if version != PROFILE_VERSION:
            raise ProfileFormatError(
                f"profile format version {version!r} is not {PROFILE_VERSION}; re-measure it"
            )
        kwargs: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            if field.name not in data:
                if field.default is dataclasses.MISSING:
                    raise ProfileFormatError(f"profile is missing the field {field.name!r}")
                continue
            kwargs[field.name] = _check(field.name, str(field.type), data[field.name])
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)} - {"version"}
        if unknown:
            log.debug("ignoring unknown profile fields %s", sorted(unknown))
        return cls(**kwargs)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DeviceProfile:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ProfileFormatError(f"profile is not valid JSON: {error}") from error
        return cls.from_dict(data)


def _check(name: str, type_text: str, value: Any) -> Any:
    """Validate one field against its annotation (the annotations are strings here)."""
    optional = type_text.endswith("| None")
    if value is None:
        if optional:
            return None
        raise ProfileFormatError(f"profile field {name!r} must not be null")
    base = type_text.removesuffix(" | None")
    if base == "str":
        if isinstance(value, str):
            return value
    elif base == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif base == "float":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif base == "tuple[str, ...]":
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return tuple(value)
    else:  # pragma: no cover - a new field type must be added above
        raise ProfileFormatError(f"profile field {name!r} has an unsupported type {type_text}")
    raise ProfileFormatError(f"profile field {name!r} must be {base}, got {value!r}")
