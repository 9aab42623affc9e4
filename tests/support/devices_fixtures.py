"""Builders of `DeviceProfile`s and fake cgroup trees for the devices tests."""

from __future__ import annotations

import time
from pathlib import Path

from devices import DeviceProfile


def make_profile(**overrides: object) -> DeviceProfile:
    """A plausible measured profile; override any field."""
    fields: dict[str, object] = {
        "name": "test-host",
        "arch": "x86_64",
        "os": "Linux 6.1",
        "cores": 2,
        "freq_mhz": 2445.404,
        "gflops_fp32": 72.0,
        "gflops_int8": 270.5,
        "mem_total_bytes": 25_276_063_744,
        "mem_available_bytes": 24_053_678_080,
        "mem_bandwidth_gbps": 9.6,
        "disk_read_gbps": 0.35,
        "backends": ("onnxruntime:CPUExecutionProvider", "litert"),
        "battery_percent": None,
        "temperature_c": None,
        "emulated_preset": None,
        "measured_at": time.time(),
        "profile_seconds": 2.2,
        "disk_read_method": "O_DIRECT",
        "compute_engine": "onnxruntime",
        "source": "measured",
    }
    fields.update(overrides)
    return DeviceProfile(**fields)  # type: ignore[arg-type]


def write_tree(root: Path, files: dict[str, str]) -> Path:
    """Create `files` (relative path -> content) under root; returns root."""
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return root
