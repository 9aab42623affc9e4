"""`edge-runtime profile`: measure this device, or show a preset or its emulation.

Prints a readable table (or `--json`: exactly `DeviceProfile.to_json`, for every
mode, so `DeviceProfile.from_json` reads what it prints; preset sources live in
devices/presets.json and the table). The
header always says where the figures come from — measured here, a published
preset, or an emulation on this host — so a preset is never taken for a measurement.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from devices import DeviceProfile, ResourceCaps


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the profile as JSON")
    parser.add_argument(
        "--refresh", action="store_true", help="measure again even if a fresh cached profile exists"
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--preset", metavar="NAME", help="show a named reference profile (e.g. raspberry-pi-4)"
    )
    which.add_argument(
        "--emulate",
        metavar="NAME",
        help="show what an agent on this host emulating preset NAME reports, and its caps",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="profile cache directory (default: $EDGE_RUNTIME_CACHE_DIR/profiles "
        "or ~/.cache/edge-runtime/profiles)",
    )


def _gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:.2f} GB"


def _optional(value: float | None, unit: str) -> str:
    return "n/a" if value is None else f"{value:.1f} {unit}"


def format_profile(
    found: DeviceProfile,
    sources: dict[str, str] | None = None,
    caps: ResourceCaps | None = None,
) -> str:
    """The human-readable table of a profile (with each figure's source for presets)."""
    if found.source == "preset":
        origin = "preset: published or derived figures, not measured here"
    elif found.emulated_preset is not None:
        origin = "EMULATED on this host: the preset's figures, enforced by resource caps"
    else:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(found.measured_at))
        origin = f"measured {when} in {found.profile_seconds:.2f} s"
    rows: list[tuple[str, str, str]] = [
        ("device", found.label(), ""),
        ("source", origin, ""),
        ("arch / OS", f"{found.arch} / {found.os}", "arch"),
        ("cores", f"{found.cores} @ {found.freq_mhz:.0f} MHz", "cores"),
        ("fp32 matmul", f"{found.gflops_fp32:.1f} GFLOPS ({found.compute_engine})", "gflops_fp32"),
        ("int8 matmul", f"{found.gflops_int8:.1f} GOPS ({found.compute_engine})", "gflops_int8"),
        ("memory total", _gb(found.mem_total_bytes), "mem_total_bytes"),
        ("memory available", _gb(found.mem_available_bytes), "mem_available_bytes"),
        (
            "memory bandwidth",
            f"{found.mem_bandwidth_gbps:.2f} GB/s (streaming read)",
            "mem_bandwidth_gbps",
        ),
        (
            "disk read",
            f"{found.disk_read_gbps:.3f} GB/s ({found.disk_read_method})",
            "disk_read_gbps",
        ),
        ("backends", ", ".join(found.backends) or "none", ""),
        ("battery", _optional(found.battery_percent, "%"), ""),
        ("temperature", _optional(found.temperature_c, "°C"), ""),
    ]
    if caps is not None:
        rows.append(("caps", caps.label(), ""))
        if caps.cpus is not None:
            rows.append(("pinned CPUs", ", ".join(map(str, caps.cpus)), ""))
    width = max(len(label) for label, _, _ in rows)
    lines = []
    for label, value, field in rows:
        line = f"{label:<{width}}  {value}"
        if sources and field in sources:
            line += f"\n{'':<{width}}    source: {sources[field]}"
        lines.append(line)
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import devices
    from devices import presets

    sources: dict[str, str] | None = None
    caps = None
    if args.preset:
        found = presets.get(args.preset)
        sources = presets.sources(args.preset)
    elif args.emulate:
        host = devices.profile(refresh=args.refresh, cache_dir=args.cache_dir)
        caps = devices.caps_for_preset(args.emulate, host)
        found = devices.emulated_profile(args.emulate, host)
    else:
        found = devices.profile(refresh=args.refresh, cache_dir=args.cache_dir)
    if args.json:  # always exactly DeviceProfile.to_json, so from_json reads any of them
        print(found.to_json())
        return 0
    if args.preset:
        print(presets.notes(args.preset))
    print(format_profile(found, sources, caps))
    return 0
